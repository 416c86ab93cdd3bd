package lab

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// netnsDir is where named network namespaces are bind-mounted (the
	// place `ip netns` uses).
	netnsDir = "/run/netns"
	// lockDir holds one lock file per running lab. The lab's process holds
	// an flock on it for its whole life, so a lab whose lock can be taken
	// belongs to a process that is gone.
	lockDir = "/run/hflab"
	// killWait bounds how long Close waits for killed processes to go.
	killWait = 3 * time.Second
)

func lockPath(name string) string { return filepath.Join(lockDir, name+".lock") }

// acquireLabLock takes the lock of lab name, failing if a live process
// holds it.
func acquireLabLock(name string) (*os.File, error) {
	if err := os.MkdirAll(lockDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", lockDir, err)
	}
	for range 10 {
		f, err := os.OpenFile(lockPath(name), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("opening lock of lab %s: %w", name, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("lab %s is in use by another process (stop it, or pick another name)", name)
			}
			return nil, fmt.Errorf("locking lab %s: %w", name, err)
		}
		if !lockStillLinked(f) {
			f.Close() // a clean-up removed the file before we locked it: again
			continue
		}
		if err := f.Truncate(0); err == nil {
			_, _ = f.WriteString(strconv.Itoa(os.Getpid()) + "\n")
		}
		return f, nil
	}
	return nil, fmt.Errorf("locking lab %s: lock file keeps being replaced", name)
}

// lockStillLinked reports whether the locked file f is still the one at
// its path (a lock on a file removed meanwhile protects nothing).
func lockStillLinked(f *os.File) bool {
	var a, b unix.Stat_t
	if unix.Fstat(int(f.Fd()), &a) != nil || unix.Stat(f.Name(), &b) != nil {
		return false
	}
	return a.Ino == b.Ino && a.Dev == b.Dev
}

func (l *Lab) releaseLock() {
	if l.lock == nil {
		return
	}
	_ = os.Remove(l.lock.Name())
	_ = l.lock.Close()
	l.lock = nil
}

// labOfNamespace returns the lab name of a namespace called
// hflab-<lab>-h<i>, or "" when the name is not one of ours.
func labOfNamespace(ns string) string {
	rest, ok := strings.CutPrefix(ns, NamePrefix)
	if !ok {
		return ""
	}
	i := strings.LastIndex(rest, "-h")
	if i <= 0 {
		return ""
	}
	if _, err := strconv.Atoi(rest[i+2:]); err != nil {
		return ""
	}
	return rest[:i]
}

// labNamespaces lists the namespaces of every lab, by lab name.
func labNamespaces() (map[string][]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w", netnsDir, err)
	}
	out := make(map[string][]string)
	for _, e := range entries {
		if lab := labOfNamespace(e.Name()); lab != "" {
			out[lab] = append(out[lab], e.Name())
		}
	}
	return out, nil
}

// removeLabNamespaces removes every namespace of lab name, killing what
// runs inside. The caller holds the lab's lock.
func removeLabNamespaces(name string, log *slog.Logger) ([]string, error) {
	all, err := labNamespaces()
	if err != nil {
		return nil, err
	}
	var removed []string
	var errs []error
	for _, ns := range all[name] {
		if err := killNamespaceProcs(filepath.Join(netnsDir, ns)); err != nil {
			errs = append(errs, err)
		}
		if err := deleteNamespace(ns); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed leftover namespace", "netns", ns)
		removed = append(removed, ns)
	}
	return removed, errors.Join(errs...)
}

// Cleanup removes what crashed labs left behind: the namespaces (and the
// processes still in them) and lock files of every lab whose process is
// gone. Labs of live processes are left alone. It returns the namespaces
// it removed. `holdfast lab down` calls it; Start calls it too.
func Cleanup(logger *slog.Logger) ([]string, error) {
	return cleanup(logger, false)
}

// CleanupAll is Cleanup that also removes the namespaces of labs whose
// process is still running (their emulators stop forwarding).
func CleanupAll(logger *slog.Logger) ([]string, error) {
	return cleanup(logger, true)
}

func cleanup(logger *slog.Logger, force bool) ([]string, error) {
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	all, err := labNamespaces()
	if err != nil {
		return nil, err
	}
	// Lock files of labs that never got a namespace are leftovers too.
	if locks, err := os.ReadDir(lockDir); err == nil {
		for _, e := range locks {
			if name, ok := strings.CutSuffix(e.Name(), ".lock"); ok {
				if _, seen := all[name]; !seen {
					all[name] = nil
				}
			}
		}
	}
	names := make([]string, 0, len(all))
	for name := range all {
		names = append(names, name)
	}
	sort.Strings(names)
	var removed []string
	var errs []error
	for _, name := range names {
		f, err := os.OpenFile(lockPath(name), os.O_RDWR, 0)
		if err == nil {
			if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil || !lockStillLinked(f) {
				if !force {
					logger.Debug("lab in use, left alone", "lab", name)
					f.Close()
					continue
				}
				logger.Warn("removing lab of a running process", "lab", name)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("opening lock of lab %s: %w", name, err))
			continue
		}
		r, err := removeLabNamespaces(name, logger)
		removed = append(removed, r...)
		if err != nil {
			errs = append(errs, err)
		} else {
			_ = os.Remove(lockPath(name))
		}
		if f != nil {
			f.Close()
		}
	}
	return removed, errors.Join(errs...)
}

// deleteNamespace unmounts and removes a named namespace. The kernel frees
// it (and the TUN device in it, once the emulator's descriptor is closed)
// when nothing uses it any more.
func deleteNamespace(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting namespace %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing namespace %s: %w", name, err)
	}
	return nil
}

// namespacePIDs returns the processes (other than this one) with a thread
// in the namespace bind-mounted at nsPath.
func namespacePIDs(nsPath string) ([]int, error) {
	var target unix.Stat_t
	if err := unix.Stat(nsPath, &target); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("stat %s: %w", nsPath, err)
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing /proc: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		tasks, err := os.ReadDir(filepath.Join("/proc", p.Name(), "task"))
		if err != nil {
			continue // gone, or a zombie
		}
		for _, t := range tasks {
			var st unix.Stat_t
			if unix.Stat(filepath.Join("/proc", p.Name(), "task", t.Name(), "ns", "net"), &st) != nil {
				continue
			}
			if st.Ino == target.Ino && st.Dev == target.Dev {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids, nil
}

// killNamespaceProcs kills every process in the namespace and waits (a
// little) until they are gone.
func killNamespaceProcs(nsPath string) error {
	deadline := time.Now().Add(killWait)
	for {
		pids, err := namespacePIDs(nsPath)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still in %s after SIGKILL", pids, filepath.Base(nsPath))
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
