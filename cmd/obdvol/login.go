package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/obdvol/obdvol/repo"
)

type loginOptions struct {
	User          string
	PasswordStdin bool
	PlainHTTP     bool
}

func newLoginCommand(g *globalOptions) *cobra.Command {
	o := &loginOptions{}
	cmd := &cobra.Command{
		Use:   "login HOST",
		Short: "Store registry credentials in the docker config (or its credential helper)",
		Long: `Check the credentials against the registry and store them where docker and
skopeo find them (~/.docker/config.json, credsStore, credHelpers). The password is
read from stdin (--password-stdin) and never printed or logged.`,
		Example: "  echo \"$TOKEN\" | obdvol login registry.example.com -u me --password-stdin",
		Args:    exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.User == "" || !o.PasswordStdin {
				return usagef("login needs -u USER and --password-stdin")
			}
			line, err := bufio.NewReader(os.Stdin).ReadString('\n')
			if err != nil && line == "" {
				return fmt.Errorf("reading the password from stdin: %w", err)
			}
			pw := strings.TrimRight(line, "\r\n")
			if err := repo.Login(cmd.Context(), args[0], o.User, pw, repo.TargetOptions{PlainHTTP: o.PlainHTTP}); err != nil {
				return err
			}
			if g.JSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"host": args[0], "user": o.User, "logged_in": true})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged in to %s as %s\n", args[0], o.User)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.User, "username", "u", "", "user name")
	f.BoolVar(&o.PasswordStdin, "password-stdin", false, "read the password from stdin")
	f.BoolVar(&o.PlainHTTP, "plain-http", false, "use plain HTTP (no TLS)")
	return cmd
}

func newLogoutCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "logout HOST",
		Short: "Remove stored registry credentials",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := repo.Logout(cmd.Context(), args[0], repo.TargetOptions{}); err != nil {
				return err
			}
			if g.JSON {
				return printJSON(cmd.OutOrStdout(), map[string]any{"host": args[0], "logged_in": false})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "logged out of %s\n", args[0])
			return nil
		},
	}
}
