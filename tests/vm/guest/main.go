// Command guest runs inside the test VM: it reports, with marker lines on
// the serial console, what the ublk frontend needs from the kernel.
package main

import (
	"fmt"
	"os"

	"github.com/obdvol/obdvol/device/ublk"
)

func main() {
	if err := ublk.Preflight(); err != nil {
		fmt.Println("OBDVOL-VM-PREFLIGHT FAIL", err)
		os.Exit(1)
	}
	fmt.Println("OBDVOL-VM-PREFLIGHT OK")
}
