// Package cluster owns holdfast's cluster trust: the cluster certificate
// authority (ed25519), node certificates signed by it, short-lived join
// tokens, and the TLS 1.3 configurations with which agents authenticate each
// other mutually.
//
// A cluster is created once with Init, which writes the CA key and
// certificate into a state directory. Other nodes join with a token issued
// by a CA holder (IssueToken): they generate their own key, present the
// token and a certificate request, and receive a node certificate. Every
// agent-to-agent connection then verifies the peer's certificate chain
// against the cluster CA; a peer without a certificate, with an expired one,
// or with one from another cluster is refused.
package cluster

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a node's state directory.
const (
	CACertFile   = "ca.crt"
	CAKeyFile    = "ca.key" // only on nodes that hold the CA
	NodeCertFile = "node.crt"
	NodeKeyFile  = "node.key"
)

// Lifetimes of the certificates holdfast issues.
const (
	CALifetime   = 10 * 365 * 24 * time.Hour
	NodeLifetime = 365 * 24 * time.Hour
	// clockSkew is how far back NotBefore is set so that a peer whose
	// clock runs slightly behind still accepts a fresh certificate.
	clockSkew = 5 * time.Minute
)

// uriScheme prefixes the URI SAN that names a node's cluster and node id:
// holdfast://<cluster-id>/node/<name>.
const uriScheme = "holdfast"

// ErrNoCluster is returned when a state directory holds no cluster identity.
var ErrNoCluster = errors.New("no cluster identity in state directory (run `holdfast cluster init` or `holdfast cluster join`)")

// CA is a cluster certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  ed25519.PrivateKey // nil when only the certificate is known
}

// ID returns the cluster id: the first 16 hex digits of the SHA-256 of the
// CA's public key.
func (ca *CA) ID() string { return Fingerprint(ca.Cert)[:16] }

// Fingerprint returns the hex SHA-256 of a certificate's public key info.
// Join tokens pin the CA by this value.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// NewCA creates a new cluster CA with the given human-readable name.
func NewCA(name string) (*CA, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "holdfast cluster CA " + name, Organization: []string{"holdfast"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CALifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, fmt.Errorf("self-signing CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing new CA certificate: %w", err)
	}
	return &CA{Cert: cert, Key: priv}, nil
}

// NodeCertOptions shape a node certificate.
type NodeCertOptions struct {
	// NotBefore and NotAfter override the validity window (tests use them
	// to make expired certificates). Zero means now-skew .. now+NodeLifetime.
	NotBefore, NotAfter time.Time
	// DNSNames and IPs are added as subject alternative names.
	DNSNames []string
	IPs      []net.IP
}

// SignNode issues a certificate for node name over pub. The certificate is
// valid for both TLS server and client authentication.
func (ca *CA) SignNode(name string, pub crypto.PublicKey, opts NodeCertOptions) (*x509.Certificate, error) {
	if ca.Key == nil {
		return nil, errors.New("signing node certificate: this node does not hold the CA key")
	}
	if err := ValidateNodeName(name); err != nil {
		return nil, err
	}
	now := time.Now()
	nb, na := opts.NotBefore, opts.NotAfter
	if nb.IsZero() {
		nb = now.Add(-clockSkew)
	}
	if na.IsZero() {
		na = now.Add(NodeLifetime)
	}
	u := &url.URL{Scheme: uriScheme, Host: ca.ID(), Path: "/node/" + name}
	dns := append([]string{name}, opts.DNSNames...)
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, opts.IPs...)
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"holdfast"}, OrganizationalUnit: []string{ca.ID()}},
		NotBefore:    nb,
		NotAfter:     na,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{u},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for node %q: %w", name, err)
	}
	return x509.ParseCertificate(der)
}

// NodeName returns the node name a holdfast node certificate was issued
// for, and the cluster id it belongs to.
func NodeName(cert *x509.Certificate) (name, clusterID string, err error) {
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme && strings.HasPrefix(u.Path, "/node/") {
			return strings.TrimPrefix(u.Path, "/node/"), u.Host, nil
		}
	}
	return "", "", fmt.Errorf("certificate %q carries no holdfast node identity", cert.Subject.CommonName)
}

// ValidateNodeName checks that name is usable as a node id: 1-63 characters
// of letters, digits, '-', '_' and '.'.
func ValidateNodeName(name string) error {
	if name == "" || len(name) > 63 {
		return fmt.Errorf("node name %q: must be 1 to 63 characters", name)
	}
	for _, r := range name {
		ok := r == '-' || r == '_' || r == '.' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9')
		if !ok {
			return fmt.Errorf("node name %q: only letters, digits, '-', '_' and '.' are allowed", name)
		}
	}
	return nil
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err)) // never happens on Linux
	}
	return n
}

// --- PEM files ---

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("installing %s: %w", path, err)
	}
	return nil
}

func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != typ {
		return nil, fmt.Errorf("%s: no %s PEM block", path, typ)
	}
	return b.Bytes, nil
}

func writeCert(path string, cert *x509.Certificate) error {
	return writePEM(path, "CERTIFICATE", cert.Raw, 0o644)
}

func readCert(path string) (*x509.Certificate, error) {
	der, err := readPEM(path, "CERTIFICATE")
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	return cert, nil
}

func writeKey(path string, key ed25519.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key: %w", err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func readKey(path string) (ed25519.PrivateKey, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an ed25519 key", path)
	}
	return ek, nil
}

// LoadCA reads the CA certificate (and key, when present) from dir.
func LoadCA(dir string) (*CA, error) {
	cert, err := readCert(filepath.Join(dir, CACertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoCluster
	}
	if err != nil {
		return nil, fmt.Errorf("loading cluster CA: %w", err)
	}
	ca := &CA{Cert: cert}
	key, err := readKey(filepath.Join(dir, CAKeyFile))
	switch {
	case err == nil:
		ca.Key = key
	case errors.Is(err, os.ErrNotExist):
	default:
		return nil, fmt.Errorf("loading cluster CA key: %w", err)
	}
	return ca, nil
}
