package cdp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// maxAPIBody bounds a JSON request body.
const maxAPIBody = 1 << 20

// Handler returns the agent API of the volumes, rooted at /v1/volumes:
//
//	GET    /v1/volumes                       list
//	POST   /v1/volumes                       create (CreateOptions)
//	GET    /v1/volumes/{name}                describe
//	DELETE /v1/volumes/{name}                delete
//	POST   /v1/volumes/{name}/marks          mark ({"label": ...})
//	GET    /v1/volumes/{name}/timeline       points (?since=&limit=&kinds=mark,flush&remote=AGENT)
//	POST   /v1/volumes/{name}/restore        restore (RestoreOptions without name)
//	POST   /v1/volumes/{name}/fold           fold now ({"older_than": "1h"}; default the retention)
func (m *Manager) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		list := m.List(r.Context())
		if list == nil {
			list = []Info{}
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var o CreateOptions
		if !readJSON(w, r, &o) {
			return
		}
		in, err := m.Create(r.Context(), o)
		reply(w, http.StatusCreated, in, err)
	})
	mux.HandleFunc("GET /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		in, err := m.Get(r.Context(), r.PathValue("name"))
		reply(w, http.StatusOK, in, err)
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		err := m.Delete(r.Context(), r.PathValue("name"))
		reply(w, http.StatusOK, map[string]string{"deleted": r.PathValue("name")}, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/marks", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Label string `json:"label"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		p, err := m.Mark(r.Context(), r.PathValue("name"), req.Label)
		reply(w, http.StatusCreated, p, err)
	})
	mux.HandleFunc("GET /v1/volumes/{name}/timeline", func(w http.ResponseWriter, r *http.Request) {
		q, err := parseTimelineQuery(r.URL.Query())
		if err != nil {
			reply(w, 0, nil, err)
			return
		}
		tl, err := m.Timeline(r.Context(), r.PathValue("name"), q, r.URL.Query().Get("remote"))
		reply(w, http.StatusOK, tl, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/restore", func(w http.ResponseWriter, r *http.Request) {
		var o RestoreOptions
		if !readJSON(w, r, &o) {
			return
		}
		o.Name = r.PathValue("name")
		in, err := m.Restore(r.Context(), o)
		reply(w, http.StatusCreated, in, err)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/fold", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			OlderThan string `json:"older_than"`
		}
		if !readJSON(w, r, &req) {
			return
		}
		age := m.cfg.Retention
		if req.OlderThan != "" {
			d, err := time.ParseDuration(req.OlderThan)
			if err != nil || d < 0 {
				reply(w, 0, nil, fmt.Errorf("older_than %q: %w", req.OlderThan, ErrInvalid))
				return
			}
			age = d
		}
		v, err := m.Volume(r.PathValue("name"))
		if err != nil {
			reply(w, 0, nil, err)
			return
		}
		upTo, err := v.Fold(time.Now().Add(-age))
		reply(w, http.StatusOK, map[string]uint64{"folded_up_to": upTo}, err)
	})
	return mux
}

func parseTimelineQuery(v url.Values) (TimelineQuery, error) {
	var q TimelineQuery
	var err error
	if s := v.Get("since"); s != "" {
		if q.Since, err = strconv.ParseUint(s, 10, 64); err != nil {
			return q, fmt.Errorf("since %q: %w", s, ErrInvalid)
		}
	}
	if s := v.Get("limit"); s != "" {
		if q.Limit, err = strconv.Atoi(s); err != nil || q.Limit < 0 {
			return q, fmt.Errorf("limit %q: %w", s, ErrInvalid)
		}
	}
	if s := v.Get("kinds"); s != "" {
		q.Kinds = strings.Split(s, ",")
	}
	return q, nil
}

type apiError struct {
	Error string `json:"error"`
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrExists):
		return http.StatusConflict
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrFolded):
		return http.StatusGone
	}
	return http.StatusInternalServerError
}

func reply(w http.ResponseWriter, code int, v any, err error) {
	if err != nil {
		writeJSON(w, statusOf(err), apiError{Error: err.Error()})
		return
	}
	writeJSON(w, code, v)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxAPIBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil && err != io.EOF {
		writeJSON(w, http.StatusBadRequest, apiError{Error: "decoding request: " + err.Error()})
		return false
	}
	return true
}

// Client calls the volume API of an agent.
type Client struct {
	HTTP *http.Client
	Base string // e.g. http://agent
}

// NewUnixClient returns a client for the agent API on a unix socket.
func NewUnixClient(sock string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &Client{HTTP: &http.Client{Transport: tr}, Base: "http://agent"}
}

// APIError is an error answer of the agent API.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Is maps API statuses back to the package errors.
func (e *APIError) Is(target error) bool {
	switch e.Status {
	case http.StatusNotFound:
		return target == ErrNotFound
	case http.StatusConflict:
		return target == ErrExists
	case http.StatusBadRequest:
		return target == ErrInvalid
	case http.StatusGone:
		return target == ErrFolded
	}
	return false
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encoding request: %w", err)
		}
		body = strings.NewReader(string(b))
	}
	req, err := http.NewRequestWithContext(ctx, method, c.Base+path, body)
	if err != nil {
		return fmt.Errorf("building request: %w", err)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("calling the agent API (%s %s): %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the agent API answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		var ae apiError
		json.Unmarshal(b, &ae)
		if ae.Error == "" {
			ae.Error = strings.TrimSpace(string(b))
		}
		return &APIError{Status: resp.StatusCode, Message: ae.Error}
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decoding the agent API answer: %w", err)
		}
	}
	return nil
}

// Create creates a volume.
func (c *Client) Create(ctx context.Context, o CreateOptions) (Info, error) {
	var in Info
	return in, c.do(ctx, "POST", "/v1/volumes", o, &in)
}

// List lists volumes.
func (c *Client) List(ctx context.Context) ([]Info, error) {
	var out []Info
	return out, c.do(ctx, "GET", "/v1/volumes", nil, &out)
}

// Get describes a volume.
func (c *Client) Get(ctx context.Context, name string) (Info, error) {
	var in Info
	return in, c.do(ctx, "GET", "/v1/volumes/"+url.PathEscape(name), nil, &in)
}

// Delete deletes a volume.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", "/v1/volumes/"+url.PathEscape(name), nil, nil)
}

// Mark records a named point.
func (c *Client) Mark(ctx context.Context, name, label string) (Point, error) {
	var p Point
	return p, c.do(ctx, "POST", "/v1/volumes/"+url.PathEscape(name)+"/marks", map[string]string{"label": label}, &p)
}

// Timeline lists points; remote asks that agent's remote log.
func (c *Client) Timeline(ctx context.Context, name string, q TimelineQuery, remote string) (Timeline, error) {
	v := url.Values{}
	if q.Since > 0 {
		v.Set("since", strconv.FormatUint(q.Since, 10))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if len(q.Kinds) > 0 {
		v.Set("kinds", strings.Join(q.Kinds, ","))
	}
	if remote != "" {
		v.Set("remote", remote)
	}
	var tl Timeline
	return tl, c.do(ctx, "GET", "/v1/volumes/"+url.PathEscape(name)+"/timeline?"+v.Encode(), nil, &tl)
}

// Restore restores a point as a new volume.
func (c *Client) Restore(ctx context.Context, o RestoreOptions) (Info, error) {
	var in Info
	name := o.Name
	o.Name = ""
	return in, c.do(ctx, "POST", "/v1/volumes/"+url.PathEscape(name)+"/restore", o, &in)
}

// Fold folds log records older than olderThan ("" = the retention window).
func (c *Client) Fold(ctx context.Context, name, olderThan string) (uint64, error) {
	var out map[string]uint64
	err := c.do(ctx, "POST", "/v1/volumes/"+url.PathEscape(name)+"/fold", map[string]string{"older_than": olderThan}, &out)
	return out["folded_up_to"], err
}
