package backend

import (
	"fmt"
	"strings"
)

// Open returns the backend for a repository location: a directory path,
// or "s3:[http://|https://]HOST[:PORT]/BUCKET[/PREFIX]" for an S3 store
// (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY).
func Open(location string) (Backend, error) {
	switch {
	case location == "":
		return nil, fmt.Errorf("no repository given (use --repo or HOLDFAST_REPOSITORY)")
	case strings.HasPrefix(location, "s3:"):
		cfg, err := ParseS3Location(location)
		if err != nil {
			return nil, err
		}
		return NewS3(cfg)
	}
	return NewLocal(location)
}
