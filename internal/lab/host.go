package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is one machine of the lab: a network namespace whose only way out
// is a TUN device (hf0) into the emulator. Its kernel TCP/IP stack is the
// real one.
type Host struct {
	lab   *Lab
	index int
	ns    string // namespace name
	addr  netip.Addr
	addr6 netip.Addr // invalid when IPv6 is off in this kernel
	tun   *os.File
}

// Index returns the host's index in the lab (0-based).
func (h *Host) Index() int { return h.index }

// Name returns the host's network namespace name, hflab-<lab>-h<i>: what
// `ip netns exec NAME cmd` takes.
func (h *Host) Name() string { return h.ns }

// Addr returns the host's IPv4 address, 198.18.0.<i+1>.
func (h *Host) Addr() netip.Addr { return h.addr }

// Addr6 returns the host's IPv6 address, 2001:2::<i+1>, or an invalid
// address when IPv6 is disabled in this kernel.
func (h *Host) Addr6() netip.Addr { return h.addr6 }

// AddrPort returns the host's IPv4 address with port.
func (h *Host) AddrPort(port uint16) netip.AddrPort { return netip.AddrPortFrom(h.addr, port) }

func (h *Host) nsPath() string { return filepath.Join(netnsDir, h.ns) }

// String returns the namespace name and address, for logs.
func (h *Host) String() string { return h.ns + " (" + h.addr.String() + ")" }

// Run returns a command that runs a program inside the host's namespace
// (through `ip netns exec`), like exec.CommandContext. The caller starts
// and waits for it; the lab kills it at Close if it is still running.
func (h *Host) Run(ctx context.Context, name string, args ...string) *exec.Cmd {
	// No parent-death signal: Go delivers it when the forking OS thread
	// exits, which can be long before this process does. If the process
	// dies without Close, the next lab's start-up kills what is left in
	// the namespaces (see Cleanup).
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
}

// Do runs fn on an OS thread that is inside the host's namespace, and
// returns its error. Sockets fn creates belong to the namespace and keep
// working from any goroutine afterwards. Goroutines fn starts do NOT run in
// the namespace.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(h.nsPath())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening namespace %s: %w", h.ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering namespace %s: %w", h.ns, err)
			return
		}
		var ferr error
		func() {
			defer func() {
				if r := recover(); r != nil {
					ferr = fmt.Errorf("panic in %s: %v", h.ns, r)
				}
			}()
			ferr = fn()
		}()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go ends it when this goroutine exits,
			// so no other goroutine runs in the wrong namespace.
			errc <- errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", h.ns, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen is net.Listen inside the host's namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket is net.ListenPacket inside the host's namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := h.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from inside the host's namespace, like net.Dialer's
// DialContext. Use IP literals: names are not resolved in the lab.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return h.DialWith(ctx, &net.Dialer{}, network, addr)
}

// DialWith is Dial with a caller's net.Dialer, e.g. one whose Control sets
// IP_TOS or TCP_CONGESTION on the socket before it connects.
func (h *Host) DialWith(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// SetSysctl sets a network sysctl inside the host's namespace, e.g.
// SetSysctl("net.ipv4.tcp_congestion_control", "bbr").
func (h *Host) SetSysctl(key, value string) error {
	if !strings.HasPrefix(key, "net.") || strings.Contains(key, "..") || strings.Contains(key, "/") {
		return fmt.Errorf("sysctl %q: only net.* keys are per namespace", key)
	}
	p := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return h.Do(func() error {
		if err := os.WriteFile(p, []byte(value), 0); err != nil {
			return fmt.Errorf("setting %s in %s: %w", key, h.ns, err)
		}
		return nil
	})
}

func (h *Host) close() error {
	if h.tun == nil {
		return nil
	}
	if err := h.tun.Close(); err != nil {
		return fmt.Errorf("closing TUN of %s: %w", h.ns, err)
	}
	return nil
}

// newHost makes host i: its namespace, TUN device and addresses. It
// returns the host (for cleanup) even on error once the namespace exists.
func newHost(l *Lab, i int) (*Host, error) {
	h := &Host{lab: l, index: i, ns: fmt.Sprintf("%s%s-h%d", NamePrefix, l.cfg.Name, i), addr: HostAddr(i)}
	var fd int
	made, err := inNewNamespace(h.ns, func() error {
		var err error
		fd, err = openTUN(tunName)
		return err
	})
	if !made {
		return nil, err
	}
	if err != nil {
		return h, err
	}
	h.tun = os.NewFile(uintptr(fd), h.ns+"/"+tunName)
	if err := configureHost(h, l.cfg.MTU); err != nil {
		return h, err
	}
	return h, nil
}

// inNewNamespace creates the named namespace and runs fn on a thread inside
// it. made reports whether the namespace was created.
func inNewNamespace(name string, fn func() error) (made bool, err error) {
	type result struct {
		made bool
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{false, fmt.Errorf("reading current namespace: %w", err)}
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may have unshared this thread already: restore it.
			if serr := netns.Set(orig); serr == nil {
				runtime.UnlockOSThread()
			}
			// It may also have left the mount point file behind.
			_ = os.Remove(filepath.Join(netnsDir, name))
			done <- result{false, fmt.Errorf("creating namespace %s: %w", name, err)}
			return
		}
		ns.Close()
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			done <- result{true, errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", name, err))}
			return
		}
		runtime.UnlockOSThread()
		done <- result{true, ferr}
	}()
	r := <-done
	return r.made, r.err
}

// openTUN creates a TUN device called name in the calling thread's
// namespace and returns its non-blocking descriptor.
func openTUN(name string) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("TUN name %q: %w", name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("creating TUN device %s: %w", name, err)
	}
	return fd, nil
}

// configureHost brings up lo and the TUN device with the host's addresses.
func configureHost(h *Host, mtu int) error {
	ns, err := netns.GetFromPath(h.nsPath())
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", h.ns, err)
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", h.ns, err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo in %s: %w", h.ns, err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up lo in %s: %w", h.ns, err)
	}
	tun, err := nh.LinkByName(tunName)
	if err != nil {
		return fmt.Errorf("finding %s in %s: %w", tunName, h.ns, err)
	}
	if err := nh.LinkSetMTU(tun, mtu); err != nil {
		return fmt.Errorf("setting MTU %d on %s in %s: %w", mtu, tunName, h.ns, err)
	}
	if err := nh.LinkSetTxQLen(tun, tunTxQueueLen); err != nil {
		return fmt.Errorf("setting txqueuelen on %s in %s: %w", tunName, h.ns, err)
	}
	a4 := &netlink.Addr{IPNet: &net.IPNet{IP: h.addr.AsSlice(), Mask: net.CIDRMask(prefix4.Bits(), 32)}}
	if err := nh.AddrAdd(tun, a4); err != nil {
		return fmt.Errorf("adding %s to %s in %s: %w", h.addr, tunName, h.ns, err)
	}
	a6addr := HostAddr6(h.index)
	a6 := &netlink.Addr{IPNet: &net.IPNet{IP: a6addr.AsSlice(), Mask: net.CIDRMask(prefix6.Bits(), 128)}, Flags: unix.IFA_F_NODAD}
	if err := nh.AddrAdd(tun, a6); err != nil {
		h.lab.log.Warn("no IPv6 in the lab", "host", h.ns, "err", err)
	} else {
		h.addr6 = a6addr
	}
	if err := nh.LinkSetUp(tun); err != nil {
		return fmt.Errorf("bringing up %s in %s: %w", tunName, h.ns, err)
	}
	return nil
}
