package s3

import (
	"context"
	"io"

	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// InUseMarkerName is the object a PBS 4.x S3 datastore keeps at its
// prefix root while it uses the prefix, {"hostname":"<PBS node>"}
// (pbs-datastore S3_DATASTORE_IN_USE_MARKER). It lies outside the .chunks
// and .cnt layout, so no backend path reaches it.
const InUseMarkerName = ".in-use"

// maxInUseMarker bounds what is read of the marker (PBS writes a few dozen
// bytes).
const maxInUseMarker = 64 << 10

// InUseMarker reads the prefix's PBS in-use marker; ok is false when there
// is none. Only reads: pbsq never writes or removes it.
func (s *S3) InUseMarker(ctx context.Context) (data []byte, ok bool, err error) {
	key := s.root + InUseMarkerName
	err = s.do(ctx, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		data, err = io.ReadAll(io.LimitReader(out.Body, maxInUseMarker))
		return err
	})
	if isNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, s.wrap("read", key, err)
	}
	return data, true, nil
}
