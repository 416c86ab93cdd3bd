package slo

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestDefaultPolicy(t *testing.T) {
	p := DefaultPolicy()
	if err := p.Validate(); err != nil {
		t.Fatalf("DefaultPolicy invalid: %v", err)
	}
	want := []uint8{DSCPCS1, DSCPCS0, DSCPAF11, DSCPAF21, DSCPAF31, DSCPAF41}
	for i, c := range p.Classes {
		if c.DSCP != want[i] {
			t.Errorf("class %d %s: DSCP %d, want %d", i, c.Name, c.DSCP, want[i])
		}
	}
	if p.Classes[p.ClassIndex(p.Start)].DSCP != DSCPCS0 {
		t.Errorf("start class %q is not best effort", p.Start)
	}
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name  string
		text  string
		check func(t *testing.T, p Policy)
		err   string
	}{
		{name: "empty is default", text: "", check: func(t *testing.T, p Policy) {
			if !reflect.DeepEqual(p, DefaultPolicy()) {
				t.Fatalf("got %+v", p)
			}
		}},
		{name: "scalars", text: "interval = \"100ms\"\nmargin = 0.2\nahead = 2\nhold = \"10s\"\nstart = \"scavenger\"", check: func(t *testing.T, p Policy) {
			if p.Interval != 100*time.Millisecond || p.Margin != 0.2 || p.Ahead != 2 || p.Hold != 10*time.Second || p.Start != "scavenger" {
				t.Fatalf("got %+v", p)
			}
			if len(p.Classes) != len(DefaultPolicy().Classes) {
				t.Fatalf("classes changed: %+v", p.Classes)
			}
		}},
		{name: "own classes by name and number", text: `start = "be"
[[class]]
name = "le"
dscp = "LE"
[[class]]
name = "be"
dscp = 0
[[class]]
name = "gold"
dscp = "af42"
`, check: func(t *testing.T, p Policy) {
			want := []Class{{"le", 1}, {"be", 0}, {"gold", 36}}
			if !reflect.DeepEqual(p.Classes, want) {
				t.Fatalf("classes %+v, want %+v", p.Classes, want)
			}
		}},
		{name: "EF reserved", text: "[[class]]\nname = \"standard\"\ndscp = \"EF\"", err: "reserved for telephony"},
		{name: "CS6 reserved", text: "[[class]]\nname = \"standard\"\ndscp = 48", err: "network control"},
		{name: "duplicate DSCP", text: "start = \"a\"\n[[class]]\nname = \"a\"\ndscp = 10\n[[class]]\nname = \"b\"\ndscp = \"AF11\"", err: "in both class"},
		{name: "duplicate name", text: "start = \"a\"\n[[class]]\nname = \"a\"\ndscp = 10\n[[class]]\nname = \"a\"\ndscp = 12", err: "used twice"},
		{name: "start missing", text: "start = \"gold\"", err: "start class \"gold\""},
		{name: "dscp out of range", text: "[[class]]\nname = \"standard\"\ndscp = 64", err: "out of range"},
		{name: "dscp bad name", text: "[[class]]\nname = \"standard\"\ndscp = \"AF51\"", err: "want 0-63"},
		{name: "dscp missing", text: "[[class]]\nname = \"standard\"", err: "no dscp"},
		{name: "bad name", text: "start = \"Big Class\"\n[[class]]\nname = \"Big Class\"\ndscp = 0", err: "want 1 to 32"},
		{name: "unknown key", text: "intervall = \"1s\"", err: "unknown key \"intervall\""},
		{name: "bad duration", text: "hold = \"soon\"", err: "hold"},
		{name: "interval too small", text: "interval = \"1ms\"", err: "interval"},
		{name: "hold under interval", text: "interval = \"1s\"\nhold = \"10ms\"", err: "hold"},
		{name: "ahead not above 1", text: "ahead = 1.0", err: "ahead"},
		{name: "margin too big", text: "margin = 0.95", err: "margin"},
		{name: "no classes", text: "class = []", err: "0 classes"},
		{name: "syntax", text: "[[class]\n", err: "bad policy"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := ParsePolicy([]byte(tc.text))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrPolicy) {
					t.Fatalf("ParsePolicy = %+v, %v; want error with %q wrapping ErrPolicy", p, err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParsePolicy: %v", err)
			}
			tc.check(t, p)
		})
	}
}

func TestPolicyFormatRoundTrip(t *testing.T) {
	p := DefaultPolicy()
	p.Classes = append(p.Classes[:2:2], Class{Name: "gold", DSCP: 36})
	p.Hold = 7 * time.Second
	p.Margin = 0.25
	got, err := ParsePolicy([]byte(p.Format()))
	if err != nil {
		t.Fatalf("parsing formatted policy: %v\n%s", err, p.Format())
	}
	if !reflect.DeepEqual(got, p) {
		t.Fatalf("round trip: got %+v, want %+v", got, p)
	}
}

func TestPolicyJSON(t *testing.T) {
	p := DefaultPolicy()
	p.Hold = 7 * time.Second
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"hold":"7s"`) || !strings.Contains(string(b), `"interval":"250ms"`) {
		t.Fatalf("durations not written as strings: %s", b)
	}
	var back Policy
	if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, p) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	if err := json.Unmarshal([]byte(`{"hold":"soon"}`), &back); err == nil || !strings.Contains(err.Error(), "hold") {
		t.Fatalf("bad duration accepted: %v", err)
	}
}

func TestLoadPolicy(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("hold = \"9s\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPolicy(good)
	if err != nil || p.Hold != 9*time.Second {
		t.Fatalf("LoadPolicy(good) = %+v, %v", p, err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", MaxPolicyBytes)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("LoadPolicy(big) error = %v, want size error", err)
	}
	if _, err := LoadPolicy(filepath.Join(dir, "missing.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadPolicy(missing) error = %v, want ErrNotExist", err)
	}
}

func TestDSCPNames(t *testing.T) {
	for _, tc := range []struct {
		name string
		d    uint8
	}{{"CS0", 0}, {"CS1", 8}, {"AF11", 10}, {"AF12", 12}, {"AF13", 14}, {"AF21", 18}, {"AF31", 26}, {"AF41", 34}, {"AF43", 38}, {"EF", 46}, {"LE", 1}, {"CS7", 56}, {"VOICE-ADMIT", 44}} {
		got, err := ParseDSCP(tc.name)
		if err != nil || got != tc.d {
			t.Errorf("ParseDSCP(%q) = %d, %v; want %d", tc.name, got, err, tc.d)
		}
		if n := DSCPName(tc.d); n != tc.name {
			t.Errorf("DSCPName(%d) = %q, want %q", tc.d, n, tc.name)
		}
	}
	for d := range uint8(64) {
		got, err := ParseDSCP(DSCPName(d))
		if err != nil || got != d {
			t.Errorf("ParseDSCP(DSCPName(%d)=%q) = %d, %v", d, DSCPName(d), got, err)
		}
	}
	for _, bad := range []string{"64", "AF14", "AF51", "CS8", "", "-1", "ef1"} {
		if _, err := ParseDSCP(bad); err == nil {
			t.Errorf("ParseDSCP(%q) accepted", bad)
		}
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(DefaultPolicy().Format()))
	f.Add([]byte("start = \"a\"\n[[class]]\nname = \"a\"\ndscp = \"AF11\"\n"))
	f.Add([]byte("hold = \"1s\"\nmargin = 0.5"))
	f.Add([]byte("[[class]]\nname = 3\ndscp = [1]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			if !errors.Is(err, ErrPolicy) {
				t.Fatalf("error %v does not wrap ErrPolicy", err)
			}
			return
		}
		if err := p.Validate(); err != nil {
			t.Fatalf("accepted an invalid policy: %v", err)
		}
		again, err := ParsePolicy([]byte(p.Format()))
		if err != nil {
			t.Fatalf("formatted policy does not parse: %v\n%s", err, p.Format())
		}
		if !reflect.DeepEqual(again, p) {
			t.Fatalf("round trip changed the policy:\n%+v\n%+v", p, again)
		}
	})
}
