package cluster

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Join tokens are stateless and signed by the CA key:
//
//	hf1.<ca-fingerprint hex>.<base64url(expiry unix u64 | nonce 16 bytes | ed25519 signature 64 bytes)>
//
// The fingerprint lets the joining node pin the CA before it trusts
// anything the server says; the signature lets any CA holder accept the
// token without shared state. A token is a bearer secret until it expires.
const tokenPrefix = "hf1"

// DefaultTokenTTL is how long a join token is valid unless asked otherwise.
const DefaultTokenTTL = time.Hour

// MaxTokenTTL bounds join token lifetimes: tokens are meant to be short-lived.
const MaxTokenTTL = 7 * 24 * time.Hour

const tokenBodyLen = 8 + 16 + ed25519.SignatureSize

// Errors returned by ValidateToken.
var (
	ErrTokenMalformed = errors.New("join token is malformed")
	ErrTokenExpired   = errors.New("join token has expired")
	ErrTokenCluster   = errors.New("join token is for another cluster")
	ErrTokenSignature = errors.New("join token signature is invalid")
)

// Token is a parsed join token.
type Token struct {
	CAFingerprint string
	Expiry        time.Time
	nonce         [16]byte
	sig           []byte
}

// IssueToken returns a join token valid for ttl.
func (ca *CA) IssueToken(ttl time.Duration) (string, error) {
	if ca.Key == nil {
		return "", errors.New("issuing join token: this node does not hold the CA key")
	}
	if ttl <= 0 || ttl > MaxTokenTTL {
		return "", fmt.Errorf("issuing join token: ttl %v out of range (0, %v]", ttl, MaxTokenTTL)
	}
	body := make([]byte, 24, tokenBodyLen)
	binary.BigEndian.PutUint64(body[:8], uint64(time.Now().Add(ttl).Unix()))
	if _, err := rand.Read(body[8:24]); err != nil {
		return "", fmt.Errorf("issuing join token: %w", err)
	}
	sig := ed25519.Sign(ca.Key, tokenMessage(Fingerprint(ca.Cert), body[:24]))
	body = append(body, sig...)
	return tokenPrefix + "." + Fingerprint(ca.Cert) + "." + base64.RawURLEncoding.EncodeToString(body), nil
}

func tokenMessage(fp string, body []byte) []byte {
	return append([]byte("holdfast join token v1\x00"+fp+"\x00"), body...)
}

// ParseToken parses a token's structure without validating its signature.
func ParseToken(s string) (*Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	if len(parts) != 3 || parts[0] != tokenPrefix {
		return nil, fmt.Errorf("%w: want %s.<fingerprint>.<body>", ErrTokenMalformed, tokenPrefix)
	}
	if fp, err := hex.DecodeString(parts[1]); err != nil || len(fp) != 32 {
		return nil, fmt.Errorf("%w: bad CA fingerprint", ErrTokenMalformed)
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || len(body) != tokenBodyLen {
		return nil, fmt.Errorf("%w: bad body", ErrTokenMalformed)
	}
	t := &Token{
		CAFingerprint: parts[1],
		Expiry:        time.Unix(int64(binary.BigEndian.Uint64(body[:8])), 0),
		sig:           body[24:],
	}
	copy(t.nonce[:], body[8:24])
	return t, nil
}

// ValidateToken checks that s is a token of this CA that has not expired.
func (ca *CA) ValidateToken(s string, now time.Time) error {
	t, err := ParseToken(s)
	if err != nil {
		return err
	}
	if t.CAFingerprint != Fingerprint(ca.Cert) {
		return ErrTokenCluster
	}
	body := make([]byte, 24)
	binary.BigEndian.PutUint64(body[:8], uint64(t.Expiry.Unix()))
	copy(body[8:], t.nonce[:])
	pub, ok := ca.Cert.PublicKey.(ed25519.PublicKey)
	if !ok || !ed25519.Verify(pub, tokenMessage(t.CAFingerprint, body), t.sig) {
		return ErrTokenSignature
	}
	if now.After(t.Expiry) {
		return fmt.Errorf("%w (at %s)", ErrTokenExpired, t.Expiry.UTC().Format(time.RFC3339))
	}
	return nil
}

// JoinTLS returns the client TLS configuration a node without a certificate
// uses to reach a CA holder: it presents no certificate, and accepts the
// server only if its chain ends in the CA pinned by the token.
func JoinTLS(t *Token) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below against the pinned CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) < 2 {
				return errors.New("join: server sent no CA certificate")
			}
			ca := cs.PeerCertificates[len(cs.PeerCertificates)-1]
			if Fingerprint(ca) != t.CAFingerprint {
				return errors.New("join: server's CA does not match the token's fingerprint")
			}
			pool := x509.NewCertPool()
			pool.AddCert(ca)
			return verifyChain(cs.PeerCertificates[:len(cs.PeerCertificates)-1], pool, x509.ExtKeyUsageServerAuth)
		},
	}
}

// JoinRequest is what a joining node sends: the token and a self-signed
// certificate request carrying its chosen name and public key.
type JoinRequest struct {
	Token string `json:"token"`
	Name  string `json:"name"`
	CSR   []byte `json:"csr"` // DER x509 certificate request
}

// JoinResponse carries the issued node certificate and the CA certificate.
type JoinResponse struct {
	NodeCert []byte `json:"node_cert"` // DER
	CACert   []byte `json:"ca_cert"`   // DER
}

// NewJoinRequest generates a node key and a join request for name.
func NewJoinRequest(name, token string) (*JoinRequest, ed25519.PrivateKey, error) {
	if err := ValidateNodeName(name); err != nil {
		return nil, nil, err
	}
	if _, err := ParseToken(token); err != nil {
		return nil, nil, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating node key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, priv)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate request: %w", err)
	}
	return &JoinRequest{Token: token, Name: name, CSR: csr}, priv, nil
}

// Admit validates a join request and signs the node certificate.
func (ca *CA) Admit(req *JoinRequest, now time.Time) (*JoinResponse, error) {
	if err := ca.ValidateToken(req.Token, now); err != nil {
		return nil, fmt.Errorf("join of %q refused: %w", req.Name, err)
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("join of %q refused: parsing certificate request: %w", req.Name, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("join of %q refused: certificate request signature: %w", req.Name, err)
	}
	cert, err := ca.SignNode(req.Name, csr.PublicKey, NodeCertOptions{})
	if err != nil {
		return nil, fmt.Errorf("join of %q: %w", req.Name, err)
	}
	return &JoinResponse{NodeCert: cert.Raw, CACert: ca.Cert.Raw}, nil
}

// Complete turns a join response into a node identity, checking that the
// certificate is for our key and chains to the CA the token pinned.
func (t *Token) Complete(name string, key ed25519.PrivateKey, resp *JoinResponse) (*Identity, error) {
	caCert, err := x509.ParseCertificate(resp.CACert)
	if err != nil {
		return nil, fmt.Errorf("join: parsing CA certificate: %w", err)
	}
	if Fingerprint(caCert) != t.CAFingerprint {
		return nil, errors.New("join: returned CA does not match the token's fingerprint")
	}
	cert, err := x509.ParseCertificate(resp.NodeCert)
	if err != nil {
		return nil, fmt.Errorf("join: parsing node certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("join: node certificate is not for our key")
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	if err := verifyChain([]*x509.Certificate{cert}, pool, x509.ExtKeyUsageClientAuth); err != nil {
		return nil, fmt.Errorf("join: node certificate does not verify: %w", err)
	}
	if got, _, _ := NodeName(cert); got != name {
		return nil, fmt.Errorf("join: certificate issued for %q, asked for %q", got, name)
	}
	return &Identity{Name: name, CA: &CA{Cert: caCert}, Cert: cert, Key: key}, nil
}
