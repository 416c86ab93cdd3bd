package cdp

import (
	"context"
	"fmt"

	"github.com/holdfast/holdfast/internal/wire"
)

// RegisterWire serves this Manager's remote CDP logs to other agents: it
// registers HandleRemote on mux for every message type of the protocol.
func (m *Manager) RegisterWire(mux *wire.Mux) {
	for _, t := range MsgTypes {
		mux.Handle(wire.MsgType(t), func(ctx context.Context, r *wire.Request) ([]byte, error) {
			return m.HandleRemote(ctx, uint16(r.Type), r.Payload)
		})
	}
}

// SessionCaller is a Caller over the agent-to-agent wire. Session returns
// the current mTLS session to the remote agent, dialling it if needed.
type SessionCaller struct {
	Session func(ctx context.Context) (*wire.Session, error)
}

// Call sends one request on the session.
func (c SessionCaller) Call(ctx context.Context, msgType uint16, payload []byte) ([]byte, error) {
	s, err := c.Session(ctx)
	if err != nil {
		return nil, fmt.Errorf("reaching the remote agent: %w", err)
	}
	return s.Call(ctx, wire.MsgType(msgType), payload)
}
