package s3

import (
	"context"
	"errors"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/pbsq/pbsq/datastore/backend"
)

var (
	_ backend.ConditionalToucher = (*S3)(nil)
	_ backend.BatchRemover       = (*S3)(nil)
	_ backend.RangeWalker        = (*S3)(nil)
)

// countRequest books one request on the context's counters.
func countRequest(ctx context.Context) { backend.AddRequest(ctx) }

// TouchIfOlder implements backend.ConditionalToucher in one request where
// the server updates LastModified on self-copies (a copy conditional on
// x-amz-copy-source-if-unmodified-since), and in two (a conditional GET and
// a PUT) where it does not, instead of a HEAD followed by Touch.
func (s *S3) TouchIfOlder(ctx context.Context, name string, before time.Time) (bool, error) {
	key, err := s.key(name)
	if err != nil {
		return false, err
	}
	if s.touchRewrite.Load() {
		return s.rewriteIfOlder(ctx, name, key, before)
	}
	var out *s3.CopyObjectOutput
	err = s.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket: &s.bucket, Key: &key,
			CopySource:                  aws.String(copySource(s.bucket, key)),
			CopySourceIfUnmodifiedSince: aws.Time(before),
			MetadataDirective:           types.MetadataDirectiveReplace,
		})
		return err
	})
	if older, err := s.olderAnswer(name, err); !older {
		return false, err
	}
	if s.copyKeptTime(out) {
		return true, s.rewrite(ctx, name, key)
	}
	return true, nil
}

// olderAnswer reads the answer to a touch request conditional on
// If-Unmodified-Since: older reports that it went through; 412 (recent)
// is not an error.
func (s *S3) olderAnswer(name string, err error) (older bool, _ error) {
	switch {
	case isPreconditionFailed(err):
		return false, nil
	case isNotFound(err):
		return false, backend.NotExist(name)
	case err != nil:
		return false, s.wrap("touch", name, err)
	}
	return true, nil
}

// rewriteIfOlder is rewrite with a GET conditional on If-Unmodified-Since.
func (s *S3) rewriteIfOlder(ctx context.Context, name, key string, before time.Time) (bool, error) {
	data, etag, err := s.getObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key, IfUnmodifiedSince: aws.Time(before)})
	if older, err := s.olderAnswer(name, err); !older {
		return false, err
	}
	return true, s.putIfMatch(ctx, name, key, data, etag)
}

// WalkFrom implements backend.RangeWalker: ListObjectsV2 returns keys in
// byte order, and StartAfter starts the listing past after.
func (s *S3) WalkFrom(ctx context.Context, dir, after string, fn func(backend.FileInfo) error) error {
	prefix, err := s.dirPrefix(dir)
	if err != nil {
		return err
	}
	if err := validPath(after); err != nil {
		return err
	}
	startAfter := ""
	if after != "" {
		if startAfter, err = s.key(after); err != nil {
			return err
		}
	}
	if err := s.walkKeys(ctx, dir, prefix, startAfter, fn); !errors.Is(err, backend.ErrStopWalk) {
		return err
	}
	return nil
}
