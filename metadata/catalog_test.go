package metadata

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// testTimeout keeps ErrBusy tests fast.
const testTimeout = 100 * time.Millisecond

func newCatalog(t *testing.T) *Catalog {
	t.Helper()
	c, err := open(filepath.Join(t.TempDir(), "catalog.db"), testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawUpdate changes the file behind the package's back.
func rawUpdate(t *testing.T, path string, fn func(*bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestOpenCreates(t *testing.T) {
	c := newCatalog(t)
	fi, err := os.Stat(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	db, err := bolt.Open(c.Path(), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(btx *bolt.Tx) error {
		for _, b := range allBuckets {
			if btx.Bucket(b) == nil {
				return fmt.Errorf("no bucket %s", b)
			}
		}
		v, err := decodeSchema(btx.Bucket(bucketMeta).Get(keySchema))
		if v != SchemaVersion {
			return fmt.Errorf("schema %d, %v", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenTwice(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("db")) })
	c2, err := Open(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	mustView(t, c2, func(tx *Tx) error { _, err := tx.Volume("db"); return err })
}

func TestSchemaNewer(t *testing.T) {
	c := newCatalog(t)
	rawUpdate(t, c.Path(), func(btx *bolt.Tx) error {
		return btx.Bucket(bucketMeta).Put(keySchema, encodeSchema(SchemaVersion+1))
	})
	_, err := Open(c.Path())
	if !errors.Is(err, ErrSchema) {
		t.Fatalf("Open = %v, want ErrSchema", err)
	}
	for _, want := range []string{fmt.Sprintf("version %d", SchemaVersion+1), fmt.Sprintf("version %d", SchemaVersion), c.Path()} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	// A handle opened before the upgrade refuses too, and writes nothing.
	if err := c.View(func(*Tx) error { return nil }); !errors.Is(err, ErrSchema) {
		t.Errorf("View = %v, want ErrSchema", err)
	}
	if err := c.Update(func(tx *Tx) error { return tx.PutVolume(testVolume("x")) }); !errors.Is(err, ErrSchema) {
		t.Errorf("Update = %v, want ErrSchema", err)
	}
}

func TestSchemaCorrupt(t *testing.T) {
	c := newCatalog(t)
	rawUpdate(t, c.Path(), func(btx *bolt.Tx) error {
		return btx.Bucket(bucketMeta).Put(keySchema, []byte{1, 2, 3})
	})
	if _, err := Open(c.Path()); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Open = %v, want ErrCorrupt", err)
	}
	rawUpdate(t, c.Path(), func(btx *bolt.Tx) error {
		if err := btx.Bucket(bucketMeta).Put(keySchema, encodeSchema(SchemaVersion)); err != nil {
			return err
		}
		return btx.DeleteBucket(bucketLayers)
	})
	if err := c.View(func(*Tx) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Errorf("View with a bucket missing = %v, want ErrCorrupt", err)
	}
}

func TestOpenNotBolt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "catalog.db")
	if err := os.WriteFile(path, []byte(strings.Repeat("not a database\n", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := open(path, testTimeout); !errors.Is(err, ErrCorrupt) {
		t.Errorf("open = %v, want ErrCorrupt", err)
	}
}

func TestFileRemovedAfterOpen(t *testing.T) {
	c := newCatalog(t)
	if err := os.Remove(c.Path()); err != nil {
		t.Fatal(err)
	}
	if err := c.Update(func(*Tx) error { return nil }); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Update = %v, want ErrNotExist", err)
	}
	if _, err := os.Stat(c.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Update recreated the file: %v", err)
	}
	if err := c.View(func(*Tx) error { return nil }); err == nil {
		t.Error("View of a removed catalogue succeeded")
	}
}

func TestBusy(t *testing.T) {
	c := newCatalog(t)
	db, err := bolt.Open(c.Path(), 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.View(func(*Tx) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("View = %v, want ErrBusy", err)
	}
	if d := time.Since(start); d > 10*testTimeout {
		t.Errorf("View waited %s with Timeout %s", d, testTimeout)
	}
	called := false
	if err := c.Update(func(*Tx) error { called = true; return nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("Update = %v, want ErrBusy", err)
	} else if !strings.Contains(err.Error(), "another obdvol process") {
		t.Errorf("ErrBusy message %q", err)
	}
	if called {
		t.Error("fn ran without the lock")
	}
	if _, err := open(c.Path(), testTimeout); !errors.Is(err, ErrBusy) {
		t.Errorf("open = %v, want ErrBusy", err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	mustView(t, c, func(*Tx) error { return nil })
}

// TestBusyOtherProcess holds the lock from a child process, the way two
// obdvol commands meet.
func TestBusyOtherProcess(t *testing.T) {
	if path := os.Getenv("METADATA_TEST_HOLD"); path != "" {
		db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("locked")
		bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
		db.Close()
		os.Exit(0)
	}
	c := newCatalog(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestBusyOtherProcess$")
	cmd.Env = append(os.Environ(), "METADATA_TEST_HOLD="+c.Path())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if strings.TrimSpace(line) != "locked" {
		stdin.Close()
		cmd.Wait()
		t.Fatalf("child: %q", line)
	}
	if err := c.Update(func(*Tx) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("Update = %v, want ErrBusy", err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, c, func(*Tx) error { return nil })
}

func TestHold(t *testing.T) {
	c := newCatalog(t)
	release, err := c.Hold()
	if err != nil {
		t.Fatal(err)
	}
	release2, err := c.Hold()
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("db")) })
	mustView(t, c, func(tx *Tx) error { _, err := tx.Volume("db"); return err })
	other := &Catalog{path: c.Path(), Timeout: testTimeout}
	if err := other.View(func(*Tx) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("View through another handle while held = %v, want ErrBusy", err)
	}
	if err := release(); err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil { // a second call is a no-op
		t.Fatal(err)
	}
	if err := other.View(func(*Tx) error { return nil }); !errors.Is(err, ErrBusy) {
		t.Errorf("View while still held once = %v, want ErrBusy", err)
	}
	if err := release2(); err != nil {
		t.Fatal(err)
	}
	mustView(t, other, func(tx *Tx) error { _, err := tx.Volume("db"); return err })
}

func TestUpdateRollback(t *testing.T) {
	c := newCatalog(t)
	boom := errors.New("boom")
	err := c.Update(func(tx *Tx) error {
		if err := tx.CreateVolume(testVolume("db")); err != nil {
			return err
		}
		if _, err := tx.AddIntent(&Intent{Op: "create", Volume: "db"}); err != nil {
			return err
		}
		return boom
	})
	if err != boom {
		t.Fatalf("Update = %v, want fn's error as is", err)
	}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("panic swallowed")
			}
		}()
		c.Update(func(tx *Tx) error {
			if err := tx.CreateVolume(testVolume("db")); err != nil {
				return err
			}
			panic("boom")
		})
	}()
	mustView(t, c, func(tx *Tx) error {
		if _, err := tx.Volume("db"); !errors.Is(err, ErrNotFound) {
			t.Errorf("after rollback Volume = %v, want ErrNotFound", err)
		}
		if in, err := tx.Intents(); err != nil || len(in) != 0 {
			t.Errorf("after rollback Intents = %v, %v", in, err)
		}
		return nil
	})
	// The file is closed again after the panic: another handle gets it.
	other := &Catalog{path: c.Path(), Timeout: testTimeout}
	mustUpdate(t, other, func(*Tx) error { return nil })
}

func TestViewIsReadOnly(t *testing.T) {
	c := newCatalog(t)
	err := c.View(func(tx *Tx) error {
		if tx.Writable() {
			t.Error("View tx is writable")
		}
		return tx.PutVolume(testVolume("db"))
	})
	if err == nil {
		t.Fatal("PutVolume in View succeeded")
	}
}

// TestConcurrent runs writers through one handle and through separate
// handles at once; the file lock serialises them.
func TestConcurrent(t *testing.T) {
	c := newCatalog(t)
	c.Timeout = 30 * time.Second
	const n = 16
	var wg sync.WaitGroup
	ids := make(chan uint64, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := c
			if i%2 == 1 {
				h = &Catalog{path: c.Path(), Timeout: c.Timeout}
			}
			err := h.Update(func(tx *Tx) error {
				id, err := tx.AddIntent(&Intent{Op: "create", Volume: fmt.Sprint("v", i)})
				ids <- id
				return err
			})
			if err != nil {
				t.Error(err)
			}
			if err := h.View(func(tx *Tx) error { _, err := tx.Intents(); return err }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	close(ids)
	seen := map[uint64]bool{}
	for id := range ids {
		if seen[id] || id < 1 || id > n {
			t.Errorf("id %d repeated or out of range", id)
		}
		seen[id] = true
	}
}

// Open of a catalogue already at SchemaVersion writes nothing (a
// read-only command must work on a full disk, or a read-only mount): not
// a byte, not its modification time.
func TestOpenCurrentWritesNothing(t *testing.T) {
	c := newCatalog(t)
	mustUpdate(t, c, func(tx *Tx) error { return tx.CreateVolume(testVolume("db")) })
	before, err := os.ReadFile(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	old := time.Unix(1e9, 0)
	if err := os.Chtimes(c.Path(), old, old); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(c.Path()); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(c.Path())
	if err != nil {
		t.Fatal(err)
	}
	if string(before) != string(after) || !fi.ModTime().Equal(old) {
		t.Fatalf("Open of a current catalogue wrote to it (same bytes %v, mtime %v)", string(before) == string(after), fi.ModTime())
	}
}
