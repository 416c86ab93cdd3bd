package cluster

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"
)

// Identity is what a node needs to talk to its cluster: its own key and
// certificate, and the cluster CA that every peer must chain to.
type Identity struct {
	Name string
	CA   *CA
	Cert *x509.Certificate
	Key  ed25519.PrivateKey
}

// ClusterID returns the id of the cluster this identity belongs to.
func (id *Identity) ClusterID() string { return id.CA.ID() }

// Init creates a new cluster in dir: a CA, and a node identity for this node
// (named name) signed by it. It refuses to overwrite an existing identity.
func Init(dir, name string) (*Identity, error) {
	if err := ValidateNodeName(name); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, CACertFile)); err == nil {
		return nil, fmt.Errorf("initialising cluster in %s: a cluster identity already exists there", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	ca, err := NewCA(name)
	if err != nil {
		return nil, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating node key: %w", err)
	}
	cert, err := ca.SignNode(name, pub, NodeCertOptions{})
	if err != nil {
		return nil, err
	}
	id := &Identity{Name: name, CA: ca, Cert: cert, Key: priv}
	if err := writeKey(filepath.Join(dir, CAKeyFile), ca.Key); err != nil {
		return nil, err
	}
	if err := id.Save(dir); err != nil {
		return nil, err
	}
	return id, nil
}

// Save writes the node key, node certificate and CA certificate to dir.
func (id *Identity) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	if err := writeKey(filepath.Join(dir, NodeKeyFile), id.Key); err != nil {
		return err
	}
	if err := writeCert(filepath.Join(dir, NodeCertFile), id.Cert); err != nil {
		return err
	}
	return writeCert(filepath.Join(dir, CACertFile), id.CA.Cert)
}

// Load reads a node identity from dir. It returns ErrNoCluster when dir has
// none.
func Load(dir string) (*Identity, error) {
	ca, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	cert, err := readCert(filepath.Join(dir, NodeCertFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoCluster
	}
	if err != nil {
		return nil, fmt.Errorf("loading node certificate: %w", err)
	}
	key, err := readKey(filepath.Join(dir, NodeKeyFile))
	if err != nil {
		return nil, fmt.Errorf("loading node key: %w", err)
	}
	name, cid, err := NodeName(cert)
	if err != nil {
		return nil, err
	}
	if cid != ca.ID() {
		return nil, fmt.Errorf("node certificate belongs to cluster %s but the CA in %s is cluster %s", cid, dir, ca.ID())
	}
	return &Identity{Name: name, CA: ca, Cert: cert, Key: key}, nil
}

func (id *Identity) tlsCert() tls.Certificate {
	return tls.Certificate{
		Certificate: [][]byte{id.Cert.Raw, id.CA.Cert.Raw},
		PrivateKey:  id.Key,
		Leaf:        id.Cert,
	}
}

func (id *Identity) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(id.CA.Cert)
	return p
}

// ServerTLS returns the TLS 1.3 configuration an agent listens with. Peers
// that present a certificate must chain to the cluster CA; a peer that
// presents none is let through the handshake (so that it can ask to join)
// and must be refused for anything else by the session layer, which checks
// PeerName.
func (id *Identity) ServerTLS(log *slog.Logger) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.tlsCert()},
		ClientCAs:    id.pool(),
		ClientAuth:   tls.VerifyClientCertIfGiven,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return id.checkPeer(cs, log, "client")
		},
	}
}

// StrictServerTLS is ServerTLS for listeners that never accept joins: a
// client certificate from this cluster is required.
func (id *Identity) StrictServerTLS(log *slog.Logger) *tls.Config {
	c := id.ServerTLS(log)
	c.ClientAuth = tls.RequireAndVerifyClientCert
	return c
}

// ClientTLS returns the TLS 1.3 configuration an agent dials peers with: it
// presents the node certificate and verifies the server against the cluster
// CA. Host names are not checked (peers are reached by address); the
// certificate's cluster and node identity are.
func (id *Identity) ClientTLS(log *slog.Logger) *tls.Config {
	pool := id.pool()
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.tlsCert()},
		// Verification is done in VerifyConnection against the cluster CA
		// because peers are dialled by address, not by a name in their
		// certificate.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if err := verifyChain(cs.PeerCertificates, pool, x509.ExtKeyUsageServerAuth); err != nil {
				log.Warn("refusing peer: certificate does not verify against the cluster CA", "side", "server", "err", err)
				return fmt.Errorf("peer refused: %w", err)
			}
			return id.checkPeer(cs, log, "server")
		},
	}
}

// checkPeer checks, for a verified chain, that the peer belongs to this
// cluster. It accepts a connection without peer certificates (the session
// layer then only allows a join request).
func (id *Identity) checkPeer(cs tls.ConnectionState, log *slog.Logger, side string) error {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	name, cid, err := NodeName(cs.PeerCertificates[0])
	if err != nil {
		log.Warn("refusing peer: no node identity in certificate", "side", side, "err", err)
		return fmt.Errorf("peer refused: %w", err)
	}
	if cid != id.ClusterID() {
		log.Warn("refusing peer: certificate of another cluster", "side", side, "peer", name, "peer_cluster", cid, "cluster", id.ClusterID())
		return fmt.Errorf("peer refused: node %q belongs to cluster %s, not %s", name, cid, id.ClusterID())
	}
	return nil
}

func verifyChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	if len(certs) == 0 {
		return errors.New("peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
		CurrentTime:   time.Now(),
	})
	return err
}

// PeerName returns the verified node name of the peer of a completed TLS
// connection, or an error when the peer presented no certificate.
func PeerName(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("peer presented no client certificate")
	}
	name, _, err := NodeName(cs.PeerCertificates[0])
	return name, err
}
