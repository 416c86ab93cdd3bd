package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config locates a repository in an S3-compatible object store.
type S3Config struct {
	Endpoint  string // host[:port]
	Secure    bool   // https
	Bucket    string
	Prefix    string
	AccessKey string
	SecretKey string
	Region    string
}

// ParseS3Location parses "s3:[http://|https://]HOST[:PORT]/BUCKET[/PREFIX]"
// and takes credentials from the environment.
func ParseS3Location(loc string) (S3Config, error) {
	rest := strings.TrimPrefix(loc, "s3:")
	cfg := S3Config{Secure: true, AccessKey: os.Getenv("AWS_ACCESS_KEY_ID"), SecretKey: os.Getenv("AWS_SECRET_ACCESS_KEY"), Region: os.Getenv("AWS_DEFAULT_REGION")}
	if strings.HasPrefix(rest, "http://") || strings.HasPrefix(rest, "https://") {
		u, err := url.Parse(rest)
		if err != nil {
			return cfg, fmt.Errorf("parsing %q: %w", loc, err)
		}
		cfg.Secure = u.Scheme == "https"
		rest = u.Host + u.Path
	}
	parts := strings.SplitN(strings.Trim(rest, "/"), "/", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return cfg, fmt.Errorf("s3 location %q: want s3:HOST/BUCKET[/PREFIX]", loc)
	}
	cfg.Endpoint, cfg.Bucket = parts[0], parts[1]
	if len(parts) == 3 {
		cfg.Prefix = strings.Trim(parts[2], "/")
	}
	return cfg, nil
}

// S3 stores a repository as objects under a prefix of one bucket.
type S3 struct {
	cfg    S3Config
	client *minio.Client
}

// NewS3 connects to an S3 endpoint (no request is made yet).
func NewS3(cfg S3Config) (*S3, error) {
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.Secure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("s3 client for %s: %w", cfg.Endpoint, err)
	}
	return &S3{cfg: cfg, client: c}, nil
}

// Location returns the s3: location.
func (s *S3) Location() string {
	return "s3:" + s.cfg.Endpoint + "/" + path.Join(s.cfg.Bucket, s.cfg.Prefix)
}

func (s *S3) key(h Handle) string { return path.Join(s.cfg.Prefix, h.String()) }

func (s *S3) notExist(h Handle, err error) error {
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code == "NoSuchKey" || er.StatusCode == 404) {
		return fmt.Errorf("%s: %w", h, ErrNotExist)
	}
	return fmt.Errorf("%s: %w", h, err)
}

// Create makes the bucket if needed; it fails if a config already exists.
func (s *S3) Create(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.cfg.Bucket)
	if err != nil {
		return fmt.Errorf("checking bucket %s: %w", s.cfg.Bucket, err)
	}
	if !ok {
		if err := s.client.MakeBucket(ctx, s.cfg.Bucket, minio.MakeBucketOptions{Region: s.cfg.Region}); err != nil {
			return fmt.Errorf("creating bucket %s: %w", s.cfg.Bucket, err)
		}
	}
	if _, err := s.Stat(ctx, Handle{Type: ConfigFile}); err == nil {
		return fmt.Errorf("creating repository at %s: config already exists", s.Location())
	}
	return nil
}

// Save uploads one object (an S3 PUT is atomic).
func (s *S3) Save(ctx context.Context, h Handle, data []byte) error {
	if err := h.Valid(); err != nil {
		return err
	}
	_, err := s.client.PutObject(ctx, s.cfg.Bucket, s.key(h), bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream", DisableMultipart: len(data) < 64<<20})
	if err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	return nil
}

// TempFile creates a local temporary file for SaveFile.
func (s *S3) TempFile() (*os.File, error) { return os.CreateTemp("", "holdfast-pack-*") }

// SaveFile uploads f as h, streaming it from disk.
func (s *S3) SaveFile(ctx context.Context, h Handle, f *os.File) error {
	defer func() { f.Close(); os.Remove(f.Name()) }()
	if err := h.Valid(); err != nil {
		return err
	}
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	_, err = s.client.PutObject(ctx, s.cfg.Bucket, s.key(h), f, fi.Size(), minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return fmt.Errorf("saving %s: %w", h, err)
	}
	return nil
}

// Load reads a byte range of an object.
func (s *S3) Load(ctx context.Context, h Handle, offset, length int64) ([]byte, error) {
	if err := h.Valid(); err != nil {
		return nil, err
	}
	opts := minio.GetObjectOptions{}
	if length > 0 {
		if err := opts.SetRange(offset, offset+length-1); err != nil {
			return nil, err
		}
	} else if offset > 0 {
		if err := opts.SetRange(offset, 0); err != nil {
			return nil, err
		}
	}
	obj, err := s.client.GetObject(ctx, s.cfg.Bucket, s.key(h), opts)
	if err != nil {
		return nil, s.notExist(h, err)
	}
	defer obj.Close()
	b, err := io.ReadAll(obj)
	if err != nil {
		return nil, s.notExist(h, err)
	}
	if length > 0 && int64(len(b)) != length {
		return nil, fmt.Errorf("loading %s at %d+%d: got %d bytes", h, offset, length, len(b))
	}
	return b, nil
}

// Stat returns an object's size.
func (s *S3) Stat(ctx context.Context, h Handle) (FileInfo, error) {
	if err := h.Valid(); err != nil {
		return FileInfo{}, err
	}
	oi, err := s.client.StatObject(ctx, s.cfg.Bucket, s.key(h), minio.StatObjectOptions{})
	if err != nil {
		return FileInfo{}, s.notExist(h, err)
	}
	return FileInfo{Name: h.Name, Size: oi.Size}, nil
}

// List lists the objects of one file type.
func (s *S3) List(ctx context.Context, t FileType, fn func(FileInfo) error) error {
	if t == ConfigFile {
		fi, err := s.Stat(ctx, Handle{Type: ConfigFile})
		if errors.Is(err, ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		return fn(fi)
	}
	prefix := path.Join(s.cfg.Prefix, string(t)) + "/"
	for oi := range s.client.ListObjects(ctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: prefix, Recursive: true}) {
		if oi.Err != nil {
			return fmt.Errorf("listing %s: %w", t, oi.Err)
		}
		if err := fn(FileInfo{Name: path.Base(oi.Key), Size: oi.Size}); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes an object.
func (s *S3) Remove(ctx context.Context, h Handle) error {
	if err := h.Valid(); err != nil {
		return err
	}
	if _, err := s.Stat(ctx, h); err != nil {
		return err
	}
	if err := s.client.RemoveObject(ctx, s.cfg.Bucket, s.key(h), minio.RemoveObjectOptions{}); err != nil {
		return fmt.Errorf("removing %s: %w", h, err)
	}
	return nil
}

// Close does nothing.
func (s *S3) Close() error { return nil }
