package slo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Limits on policies.
const (
	// MaxClasses is the most classes a policy may have.
	MaxClasses = 16
	// MaxPolicyBytes is the largest policy file LoadPolicy reads.
	MaxPolicyBytes = 64 << 10
	// MinInterval and MaxInterval bound Policy.Interval.
	MinInterval = 20 * time.Millisecond
	MaxInterval = time.Minute
	// MaxPolicyDuration bounds Hold, Settle, Window and Forget.
	MaxPolicyDuration = 24 * time.Hour
)

// Well-known DSCP code points (RFC 2474, 2597, 3246, 4594, 5865, 8622).
const (
	DSCPCS0  = 0  // default forwarding, RFC 4594 "standard"
	DSCPLE   = 1  // lower effort (RFC 8622)
	DSCPCS1  = 8  // class selector 1: scavenger (RFC 4594)
	DSCPAF11 = 10 // high-throughput data
	DSCPAF21 = 18 // low-latency data
	DSCPAF31 = 26 // multimedia streaming
	DSCPAF41 = 34 // multimedia conferencing
	DSCPVA   = 44 // voice admit (RFC 5865)
	DSCPEF   = 46 // expedited forwarding: telephony
	DSCPCS6  = 48 // network control
	DSCPCS7  = 56 // reserved
)

// reservedDSCP are code points a policy may not give to a task: they belong
// to telephony and network control (RFC 4594), and a bulk task marked with
// them could starve the traffic that keeps the network running.
var reservedDSCP = map[uint8]string{
	DSCPEF:  "EF is reserved for telephony",
	DSCPVA:  "VOICE-ADMIT is reserved for telephony",
	DSCPCS6: "CS6 is reserved for network control",
	DSCPCS7: "CS7 is reserved for network control",
}

// ErrPolicy is wrapped by every error about a bad policy.
var ErrPolicy = errors.New("bad policy")

// Class is one service class of a policy: a name and the DSCP code point
// its packets carry.
type Class struct {
	// Name labels the class in logs, reports and metrics.
	Name string `json:"name"`
	// DSCP is the code point, 0 to 63 (the TOS byte is DSCP<<2).
	DSCP uint8 `json:"dscp"`
}

// Policy maps service classes to DSCP code points and tunes how a Tagger
// moves a task between them.
type Policy struct {
	// Classes are ordered from the lowest service (scavenger) up; a Tagger
	// moves a task along this list.
	Classes []Class `json:"classes"`
	// Start names the class a task starts in, before anything is measured.
	Start string `json:"start"`
	// Interval is how often a Tagger re-decides.
	Interval time.Duration `json:"interval"`
	// Margin is the part of the time left that a deadline task keeps in
	// reserve: it aims to finish with Margin of the time to spare (0 to 0.9).
	Margin float64 `json:"margin"`
	// Ahead is how many times the needed rate the task must measure to be
	// "comfortably ahead", the condition for lowering its class (above 1).
	Ahead float64 `json:"ahead"`
	// Hold is how long the task must stay comfortably ahead before its
	// class is lowered by one step.
	Hold time.Duration `json:"hold"`
	// Settle is how long a class is given, after a change, before the
	// task may be judged behind in it. The rate measured in its first half
	// does not count (TCP is still reacting to the change).
	Settle time.Duration `json:"settle"`
	// Window is the span over which the task's rate is measured; a rate
	// is trusted once half a window has been measured.
	Window time.Duration `json:"window"`
	// Forget is how long the rate measured in a class is remembered. A
	// class measured too slow is not chosen again (by lowering) until then.
	Forget time.Duration `json:"forget"`
}

// DefaultPolicy returns the policy used when none is given: six classes
// after RFC 4594, from CS1 (scavenger) up to AF41, starting in standard
// (CS0, what untagged traffic gets); EF and network control are reserved.
func DefaultPolicy() Policy {
	return Policy{
		Classes: []Class{
			{Name: "scavenger", DSCP: DSCPCS1},
			{Name: "standard", DSCP: DSCPCS0},
			{Name: "high-throughput", DSCP: DSCPAF11},
			{Name: "low-latency", DSCP: DSCPAF21},
			{Name: "streaming", DSCP: DSCPAF31},
			{Name: "conferencing", DSCP: DSCPAF41},
		},
		Start:    "standard",
		Interval: 250 * time.Millisecond,
		Margin:   0.1,
		Ahead:    1.5,
		Hold:     4 * time.Second,
		Settle:   time.Second,
		Window:   2 * time.Second,
		Forget:   30 * time.Second,
	}
}

var classNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)

// Validate reports the first problem with p, or nil.
func (p Policy) Validate() error {
	if len(p.Classes) == 0 || len(p.Classes) > MaxClasses {
		return fmt.Errorf("%w: %d classes, want 1 to %d", ErrPolicy, len(p.Classes), MaxClasses)
	}
	names := make(map[string]bool)
	codes := make(map[uint8]string)
	for i, c := range p.Classes {
		if !classNameRE.MatchString(c.Name) {
			return fmt.Errorf("%w: class %d name %q: want 1 to 32 of a-z, 0-9, - and _", ErrPolicy, i, c.Name)
		}
		if names[c.Name] {
			return fmt.Errorf("%w: class name %q used twice", ErrPolicy, c.Name)
		}
		names[c.Name] = true
		if c.DSCP > 63 {
			return fmt.Errorf("%w: class %q: DSCP %d out of range [0, 63]", ErrPolicy, c.Name, c.DSCP)
		}
		if why, ok := reservedDSCP[c.DSCP]; ok {
			return fmt.Errorf("%w: class %q: DSCP %d: %s", ErrPolicy, c.Name, c.DSCP, why)
		}
		if other, ok := codes[c.DSCP]; ok {
			return fmt.Errorf("%w: DSCP %s in both class %q and class %q", ErrPolicy, DSCPName(c.DSCP), other, c.Name)
		}
		codes[c.DSCP] = c.Name
	}
	if p.ClassIndex(p.Start) < 0 {
		return fmt.Errorf("%w: start class %q is not one of the classes", ErrPolicy, p.Start)
	}
	switch {
	case p.Interval < MinInterval || p.Interval > MaxInterval:
		return fmt.Errorf("%w: interval %v out of range [%v, %v]", ErrPolicy, p.Interval, MinInterval, MaxInterval)
	case math.IsNaN(p.Margin) || p.Margin < 0 || p.Margin > 0.9:
		return fmt.Errorf("%w: margin %v out of range [0, 0.9]", ErrPolicy, p.Margin)
	case math.IsNaN(p.Ahead) || p.Ahead <= 1 || p.Ahead > 100:
		return fmt.Errorf("%w: ahead %v out of range (1, 100]", ErrPolicy, p.Ahead)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"hold", p.Hold}, {"settle", p.Settle}, {"window", p.Window}, {"forget", p.Forget}} {
		if d.v < p.Interval || d.v > MaxPolicyDuration {
			return fmt.Errorf("%w: %s %v out of range [interval %v, %v]", ErrPolicy, d.name, d.v, p.Interval, MaxPolicyDuration)
		}
	}
	return nil
}

// ClassIndex returns the index of the class called name, or -1.
func (p Policy) ClassIndex(name string) int {
	for i, c := range p.Classes {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// policyFile is the TOML form of a policy. Durations are strings; absent
// keys keep the defaults, and a class list replaces the default one.
type policyFile struct {
	Start    *string     `toml:"start"`
	Interval *string     `toml:"interval"`
	Margin   *float64    `toml:"margin"`
	Ahead    *float64    `toml:"ahead"`
	Hold     *string     `toml:"hold"`
	Settle   *string     `toml:"settle"`
	Window   *string     `toml:"window"`
	Forget   *string     `toml:"forget"`
	Class    []fileClass `toml:"class"`
}

type fileClass struct {
	Name string `toml:"name"`
	DSCP any    `toml:"dscp"` // a name ("AF11") or a number (10)
}

// LoadPolicy reads a policy file (TOML, see ParsePolicy). It reads at most
// MaxPolicyBytes.
func LoadPolicy(path string) (Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return Policy{}, fmt.Errorf("opening policy %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxPolicyBytes+1))
	if err != nil {
		return Policy{}, fmt.Errorf("reading policy %s: %w", path, err)
	}
	if len(data) > MaxPolicyBytes {
		return Policy{}, fmt.Errorf("%w: %s is larger than %d bytes", ErrPolicy, path, MaxPolicyBytes)
	}
	p, err := ParsePolicy(data)
	if err != nil {
		return Policy{}, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy reads a policy in TOML. Every key is optional and keeps its
// DefaultPolicy value when absent; a [[class]] list, lowest service first,
// replaces the default classes. DSCP values are numbers (0-63) or names
// (CS0-CS7, AF11-AF43, LE). Format writes the same syntax:
//
//	start = "standard"
//	interval = "250ms"
//	margin = 0.1      # finish with 10% of the time left to spare
//	ahead = 1.5       # lower only when measuring 1.5x the needed rate...
//	hold = "4s"       # ...for this long
//	settle = "1s"
//	window = "2s"
//	forget = "30s"
//
//	[[class]]
//	name = "scavenger"
//	dscp = "CS1"
func ParsePolicy(data []byte) (Policy, error) {
	if len(data) > MaxPolicyBytes {
		return Policy{}, fmt.Errorf("%w: larger than %d bytes", ErrPolicy, MaxPolicyBytes)
	}
	var f policyFile
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&f)
	if err != nil {
		return Policy{}, fmt.Errorf("%w: %w", ErrPolicy, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		return Policy{}, fmt.Errorf("%w: unknown key %q (want start, interval, margin, ahead, hold, settle, window, forget, class)", ErrPolicy, und[0].String())
	}
	p := DefaultPolicy()
	if f.Start != nil {
		p.Start = *f.Start
	}
	for _, d := range []struct {
		name string
		src  *string
		dst  *time.Duration
	}{
		{"interval", f.Interval, &p.Interval}, {"hold", f.Hold, &p.Hold}, {"settle", f.Settle, &p.Settle},
		{"window", f.Window, &p.Window}, {"forget", f.Forget, &p.Forget},
	} {
		if d.src == nil {
			continue
		}
		v, err := time.ParseDuration(*d.src)
		if err != nil {
			return Policy{}, fmt.Errorf("%w: %s: %w", ErrPolicy, d.name, err)
		}
		*d.dst = v
	}
	if f.Margin != nil {
		p.Margin = *f.Margin
	}
	if f.Ahead != nil {
		p.Ahead = *f.Ahead
	}
	if f.Class != nil {
		if len(f.Class) > MaxClasses {
			return Policy{}, fmt.Errorf("%w: %d classes, at most %d", ErrPolicy, len(f.Class), MaxClasses)
		}
		p.Classes = make([]Class, len(f.Class))
		for i, c := range f.Class {
			d, err := dscpValue(c.DSCP)
			if err != nil {
				return Policy{}, fmt.Errorf("%w: class %d (%q): %w", ErrPolicy, i, c.Name, err)
			}
			p.Classes[i] = Class{Name: c.Name, DSCP: d}
		}
	}
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	return p, nil
}

func dscpValue(v any) (uint8, error) {
	switch x := v.(type) {
	case nil:
		return 0, errors.New("no dscp")
	case int64:
		if x < 0 || x > 63 {
			return 0, fmt.Errorf("DSCP %d out of range [0, 63]", x)
		}
		return uint8(x), nil
	case string:
		return ParseDSCP(x)
	}
	return 0, fmt.Errorf("dscp %v: want a number or a name such as \"AF11\"", v)
}

// ParseDSCP reads a code point: a number 0-63 or a name (CS0-CS7,
// AF11-AF43, EF, VOICE-ADMIT, LE), case-insensitive.
func ParseDSCP(s string) (uint8, error) {
	u := strings.ToUpper(strings.TrimSpace(s))
	switch {
	case u == "EF":
		return DSCPEF, nil
	case u == "LE":
		return DSCPLE, nil
	case u == "VOICE-ADMIT" || u == "VA":
		return DSCPVA, nil
	case len(u) == 3 && strings.HasPrefix(u, "CS") && u[2] >= '0' && u[2] <= '7':
		return (u[2] - '0') << 3, nil
	case len(u) == 4 && strings.HasPrefix(u, "AF") && u[2] >= '1' && u[2] <= '4' && u[3] >= '1' && u[3] <= '3':
		return (u[2]-'0')<<3 | (u[3]-'0')<<1, nil
	}
	n, err := strconv.ParseUint(u, 10, 8)
	if err != nil || n > 63 {
		return 0, fmt.Errorf("DSCP %q: want 0-63 or a name (CS0-CS7, AF11-AF43, EF, LE)", s)
	}
	return uint8(n), nil
}

// DSCPName returns the standard name of a code point ("AF11", "CS1") or
// its number when it has none.
func DSCPName(d uint8) string {
	switch {
	case d == DSCPEF:
		return "EF"
	case d == DSCPLE:
		return "LE"
	case d == DSCPVA:
		return "VOICE-ADMIT"
	case d&7 == 0 && d < 64:
		return "CS" + strconv.Itoa(int(d>>3))
	case d&1 == 0 && d>>3 >= 1 && d>>3 <= 4 && (d>>1)&3 >= 1:
		return "AF" + strconv.Itoa(int(d>>3)) + strconv.Itoa(int((d>>1)&3))
	}
	return strconv.Itoa(int(d))
}

// Format writes p in the syntax ParsePolicy reads, every key given.
func (p Policy) Format() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# holdfast service-level policy: classes lowest service first.\n")
	fmt.Fprintf(&b, "start = %q\n", p.Start)
	fmt.Fprintf(&b, "interval = %q\n", p.Interval.String())
	fmt.Fprintf(&b, "margin = %s\n", strconv.FormatFloat(p.Margin, 'g', -1, 64))
	fmt.Fprintf(&b, "ahead = %s\n", strconv.FormatFloat(p.Ahead, 'g', -1, 64))
	fmt.Fprintf(&b, "hold = %q\n", p.Hold.String())
	fmt.Fprintf(&b, "settle = %q\n", p.Settle.String())
	fmt.Fprintf(&b, "window = %q\n", p.Window.String())
	fmt.Fprintf(&b, "forget = %q\n", p.Forget.String())
	for _, c := range p.Classes {
		fmt.Fprintf(&b, "\n[[class]]\nname = %q\ndscp = %q # %d, TOS byte 0x%02x\n", c.Name, DSCPName(c.DSCP), c.DSCP, c.DSCP<<2)
	}
	return b.String()
}

// policyJSON is the JSON form of a Policy: durations as Go duration
// strings ("250ms"), as in the TOML file.
type policyJSON struct {
	Classes  []Class `json:"classes"`
	Start    string  `json:"start"`
	Interval string  `json:"interval"`
	Margin   float64 `json:"margin"`
	Ahead    float64 `json:"ahead"`
	Hold     string  `json:"hold"`
	Settle   string  `json:"settle"`
	Window   string  `json:"window"`
	Forget   string  `json:"forget"`
}

// MarshalJSON writes p with durations as strings ("4s").
func (p Policy) MarshalJSON() ([]byte, error) {
	return json.Marshal(policyJSON{
		Classes: p.Classes, Start: p.Start, Interval: p.Interval.String(), Margin: p.Margin, Ahead: p.Ahead,
		Hold: p.Hold.String(), Settle: p.Settle.String(), Window: p.Window.String(), Forget: p.Forget.String(),
	})
}

// UnmarshalJSON reads what MarshalJSON writes; absent durations stay
// zero. It does not validate.
func (p *Policy) UnmarshalJSON(b []byte) error {
	var j policyJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	q := Policy{Classes: j.Classes, Start: j.Start, Margin: j.Margin, Ahead: j.Ahead}
	for _, d := range []struct {
		name string
		src  string
		dst  *time.Duration
	}{
		{"interval", j.Interval, &q.Interval}, {"hold", j.Hold, &q.Hold}, {"settle", j.Settle, &q.Settle},
		{"window", j.Window, &q.Window}, {"forget", j.Forget, &q.Forget},
	} {
		if d.src == "" {
			continue
		}
		v, err := time.ParseDuration(d.src)
		if err != nil {
			return fmt.Errorf("policy %s: %w", d.name, err)
		}
		*d.dst = v
	}
	*p = q
	return nil
}
