package bulk

import (
	"context"
	"log/slog"
	"net"

	"github.com/holdfast/holdfast/internal/cluster"
	"github.com/holdfast/holdfast/internal/wire"
)

// Serve runs svc alone on listener ln (holdfast serve): every peer must
// present a certificate of id's cluster. It returns when ctx is cancelled.
// An agent mounts the service on its own mux with Register instead.
func Serve(ctx context.Context, ln net.Listener, id *cluster.Identity, svc *Service, log *slog.Logger) error {
	mux := &wire.Mux{}
	svc.Register(mux)
	l := &wire.Listener{
		TLS: id.StrictServerTLS(log),
		Cfg: &wire.Config{Node: id.Name, Mux: mux, Logger: log, MaxPayload: MaxBlockSize + 4096},
	}
	return l.Serve(ctx, ln)
}
