package cluster

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestInitLoadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	id, err := Init(dir, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "alpha" || got.ClusterID() != id.ClusterID() || got.CA.Key == nil {
		t.Fatalf("loaded %q cluster %s (CA key %v), want alpha cluster %s with CA key", got.Name, got.ClusterID(), got.CA.Key != nil, id.ClusterID())
	}
	if _, err := Init(dir, "alpha"); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Init: got %v, want refusal to overwrite", err)
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, ErrNoCluster) {
		t.Fatalf("Load of empty dir: got %v, want ErrNoCluster", err)
	}
}

func TestNodeNameValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"node-1", true}, {"a.b_c", true}, {"", false}, {"has space", false},
		{"slash/", false}, {strings.Repeat("x", 64), false},
	} {
		if err := ValidateNodeName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateNodeName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestJoinFlow(t *testing.T) {
	id, err := Init(t.TempDir(), "ca-node")
	if err != nil {
		t.Fatal(err)
	}
	tok, err := id.CA.IssueToken(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	req, key, err := NewJoinRequest("joiner", tok)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := id.CA.Admit(req, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	pt, _ := ParseToken(tok)
	nid, err := pt.Complete("joiner", key, resp)
	if err != nil {
		t.Fatal(err)
	}
	if nid.ClusterID() != id.ClusterID() || nid.Name != "joiner" {
		t.Fatalf("joined as %q in cluster %s, want joiner in %s", nid.Name, nid.ClusterID(), id.ClusterID())
	}
	// The issued certificate must not be usable with another key.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := pt.Complete("joiner", other, resp); err == nil {
		t.Fatal("Complete accepted a certificate for another key")
	}
}

func TestTokenRefusals(t *testing.T) {
	a, _ := Init(t.TempDir(), "a")
	b, _ := Init(t.TempDir(), "b")
	good, _ := a.CA.IssueToken(time.Minute)
	short, _ := a.CA.IssueToken(time.Second)
	other, _ := b.CA.IssueToken(time.Minute)
	// Forge: take a's token and change the expiry bytes.
	parts := strings.Split(good, ".")
	flip := "A"
	if parts[2][0] == 'A' {
		flip = "B"
	}
	forged := parts[0] + "." + parts[1] + "." + flip + parts[2][1:]

	for _, tc := range []struct {
		name  string
		tok   string
		now   time.Time
		want  error
		wantS string
	}{
		{"valid", good, time.Now(), nil, ""},
		{"expired", short, time.Now().Add(time.Hour), ErrTokenExpired, "expired"},
		{"other cluster", other, time.Now(), ErrTokenCluster, ""},
		{"forged", forged, time.Now(), ErrTokenSignature, ""},
		{"garbage", "hello", time.Now(), ErrTokenMalformed, ""},
		{"bad body", "hf1." + parts[1] + ".!!!", time.Now(), ErrTokenMalformed, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := a.CA.ValidateToken(tc.tok, tc.now)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("got %v, want valid", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := a.CA.IssueToken(30 * 24 * time.Hour); err == nil {
		t.Fatal("IssueToken accepted a 30-day ttl")
	}
	noKey := &CA{Cert: a.CA.Cert}
	if _, err := noKey.IssueToken(time.Minute); err == nil {
		t.Fatal("a CA without key issued a token")
	}
}
