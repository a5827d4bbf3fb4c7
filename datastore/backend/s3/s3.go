// Package s3 is the S3 backend: a datastore stored in an S3 bucket with the
// key layout of Proxmox Backup Server's S3 datastores, so both can read what
// the other wrote:
//
//	<prefix>/.chunks/<4hex>/<64hex>     chunk store
//	<prefix>/.cnt/<path>                everything else (namespaces, groups,
//	                                    snapshots, owner files, …)
//
// Credentials come only from the standard AWS chain (environment, shared
// config/profile, IMDS …); they are never part of Config, never logged and
// never part of an error message.
package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"path"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	smithymiddleware "github.com/aws/smithy-go/middleware"

	"github.com/pbsq/pbsq/datastore/backend"
)

// Defaults for Config's zero values.
const (
	DefaultMaxInFlight    = 64
	DefaultRequestTimeout = 60 * time.Second
	DefaultRegion         = "us-east-1"

	// maxDeleteBatch is the DeleteObjects limit of the S3 API.
	maxDeleteBatch = 1000
	// createRetries bounds CreateFile's own retries of 409
	// ConditionalRequestConflict on top of the SDK's.
	createRetries = 5
)

// Key layout of PBS S3 datastores below the prefix.
const (
	chunkDir   = ".chunks"
	contentDir = ".cnt"
)

// Errors of CheckBucket, for callers that want to tell them apart.
var (
	ErrBucketNotFound = errors.New("bucket not found")
	ErrAccessDenied   = errors.New("access denied")
	ErrUnreachable    = errors.New("endpoint unreachable")
)

// Config locates a datastore in a bucket. It carries no credentials.
type Config struct {
	// Endpoint is the S3 service URL (https://s3.example.com); empty means
	// AWS. A missing scheme means https.
	Endpoint string
	// Region defaults to the AWS chain's region, then us-east-1.
	Region string
	Bucket string
	// Prefix is the datastore's key prefix inside the bucket (no slashes at
	// either end needed; they are trimmed).
	Prefix string
	// PathStyle addresses the bucket as endpoint/bucket instead of
	// bucket.endpoint (needed by most self-hosted S3 servers).
	PathStyle bool
	// MaxInFlight bounds concurrent requests (default 64).
	MaxInFlight int
	// RequestTimeout bounds each call including its retries (default 60s).
	RequestTimeout time.Duration
	// Budget, when set, paces every request (see Budget).
	Budget *Budget
}

// Option customises the S3 client, e.g. in tests.
type Option func(*s3.Options)

// S3 is a backend.Backend on an S3 bucket. It is safe for concurrent use.
type S3 struct {
	client   *s3.Client
	http     *http.Client
	bucket   string
	prefix   string // trimmed Config.Prefix
	root     string // "<prefix>/" or "" for an empty prefix
	endpoint string // for messages
	sem      chan struct{}
	timeout  time.Duration
	// touchRewrite: the server keeps LastModified on self-copies.
	touchRewrite atomic.Bool
}

var _ backend.Backend = (*S3)(nil)

// New connects to the bucket described by cfg. It does not contact the
// server; call CheckBucket for a clear diagnosis of the setup.
func New(ctx context.Context, cfg Config, opts ...Option) (*S3, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("s3: bucket name is empty")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	endpoint := cfg.Endpoint
	if endpoint != "" && !strings.Contains(endpoint, "://") {
		endpoint = "https://" + endpoint
	}
	shown := ""
	if endpoint != "" {
		u, err := url.Parse(endpoint)
		if err != nil || u.Host == "" {
			// Deliberately not %w: url errors quote the input, which could
			// hold userinfo.
			return nil, errors.New("s3: invalid endpoint URL")
		}
		if u.User != nil {
			// Credentials belong in the AWS chain, never in the config.
			return nil, errors.New("s3: endpoint URL must not contain credentials; use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile")
		}
		shown = u.String()
	}

	// Connection pool sized so MaxInFlight requests reuse connections
	// instead of opening (and TIME_WAIT-ing) new ones.
	hc := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = 10 * time.Second
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(t *http.Transport) {
			t.MaxIdleConns = max(100, 2*cfg.MaxInFlight)
			t.MaxIdleConnsPerHost = cfg.MaxInFlight + 8
			t.IdleConnTimeout = 90 * time.Second
			t.ResponseHeaderTimeout = cfg.RequestTimeout
		})

	loadOpts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(hc),
		config.WithRetryer(func() aws.Retryer { return newRetryer() }),
		// Some S3-compatible servers reject the newer default checksum
		// headers/trailers; only send them where the API requires them.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("s3: loading AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = DefaultRegion
	}
	// Take the final transport (with any AWS_CA_BUNDLE applied) into a
	// client we own, so Close can drop its idle connections.
	if bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient); ok {
		hc = bc
	}
	httpClient := &http.Client{
		Transport: hc.GetTransport(),
		// S3 answers redirects (wrong region) with errors worth seeing.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	awsCfg.HTTPClient = httpClient

	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.UsePathStyle = cfg.PathStyle
		o.APIOptions = append(o.APIOptions, perAttemptWith(cfg.Budget))
		for _, opt := range opts {
			opt(o)
		}
	})

	prefix := strings.Trim(cfg.Prefix, "/")
	root := ""
	if prefix != "" {
		root = prefix + "/"
	}
	return &S3{
		client:   client,
		http:     httpClient,
		bucket:   cfg.Bucket,
		prefix:   prefix,
		root:     root,
		endpoint: shown,
		sem:      make(chan struct{}, cfg.MaxInFlight),
		timeout:  cfg.RequestTimeout,
	}, nil
}

// newRetryer is tuned for S3 reality: many attempts with short backoff for
// throttling (503 SlowDown), 5xx and dropped connections, and no retry
// token bucket, whose exhaustion during a burst of failures would turn
// retryable errors into "retry quota exceeded" failures.
func newRetryer() aws.Retryer {
	return retry.NewStandard(func(o *retry.StandardOptions) {
		o.MaxAttempts = 10
		o.MaxBackoff = 5 * time.Second
		o.Backoff = backoff{base: 100 * time.Millisecond, throttleBase: 500 * time.Millisecond, max: o.MaxBackoff}
		o.RateLimiter = ratelimit.None
		o.Retryables = append(o.Retryables,
			retry.RetryableErrorCode{Codes: map[string]struct{}{
				"InternalError":              {},
				"ServiceUnavailable":         {},
				"ConditionalRequestConflict": {},
				"OperationAborted":           {},
			}},
			retry.IsErrorRetryableFunc(func(err error) aws.Ternary {
				if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
					errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNABORTED) {
					return aws.TrueTernary
				}
				return aws.UnknownTernary
			}),
		)
	})
}

// backoff is exponential with full jitter from a short base: the SDK's
// legacy default starts at up to 2s, far too slow for the odd dropped
// connection among thousands of chunk uploads. Throttling (503 SlowDown)
// starts higher to give the server room.
type backoff struct {
	base, throttleBase, max time.Duration
}

var throttles = retry.IsErrorThrottles(retry.DefaultThrottles)

func (b backoff) BackoffDelay(attempt int, err error) (time.Duration, error) {
	d := b.base
	if throttles.IsErrorThrottle(err).Bool() || httpStatus(err) == http.StatusServiceUnavailable {
		d = b.throttleBase
	}
	for i := 1; i < attempt && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	return time.Duration(rand.Int64N(int64(d))) + time.Millisecond, nil
}

// Client is the underlying SDK client, for tools and tests.
func (s *S3) Client() *s3.Client { return s.client }

// Bucket is the bucket name.
func (s *S3) Bucket() string { return s.bucket }

// Prefix is the datastore's key prefix without slashes.
func (s *S3) Prefix() string { return s.prefix }

func (s *S3) String() string {
	ep := s.endpoint
	if ep == "" {
		ep = "aws"
	}
	return fmt.Sprintf("s3://%s/%s (%s)", s.bucket, s.prefix, ep)
}

// Features: objects appear and vanish without directories; there is no
// rename, so directories cannot move atomically. An operation keeps half
// the request slots busy, leaving room for listings and a second task.
func (s *S3) Features() backend.Features {
	return backend.Features{Kind: "s3", InFlight: max(1, cap(s.sem)/2), AtomicRename: false, ImplicitDirs: true, RoundTrips: true}
}

// Close drops idle connections.
func (s *S3) Close() error {
	s.http.CloseIdleConnections()
	return nil
}

// do runs one request with a slot of the in-flight semaphore and a
// per-request timeout. The timeout starts after the slot is acquired so
// that queueing behind other requests does not count against it.
func (s *S3) do(ctx context.Context, fn func(ctx context.Context) error) error {
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.sem }()
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return fn(ctx)
}

// ---- key mapping

// validPath is backend.ValidPath, also refusing ".", which it lets
// through but which names no key.
func validPath(p string) error {
	if err := backend.ValidPath(p); err != nil {
		return err
	}
	if p == "." {
		return fmt.Errorf("%w %q", backend.ErrInvalidPath, p)
	}
	return nil
}

// key maps a file path to its object key.
func (s *S3) key(name string) (string, error) {
	if err := validPath(name); err != nil {
		return "", err
	}
	if name == "" {
		return "", fmt.Errorf("%w %q: not a file name", backend.ErrInvalidPath, name)
	}
	if name == chunkDir || strings.HasPrefix(name, chunkDir+"/") {
		return s.root + name, nil
	}
	return s.root + contentDir + "/" + name, nil
}

// dirPrefix maps a directory path to the key prefix of what is below it,
// always ending in "/" so that "vm/10" never matches "vm/100/…". The root
// has two prefixes (chunks and content), see List and Walk.
func (s *S3) dirPrefix(dir string) (string, error) {
	if err := validPath(dir); err != nil {
		return "", err
	}
	if dir == "" {
		return "", fmt.Errorf("%w %q: the root has no single prefix", backend.ErrInvalidPath, dir)
	}
	k, err := s.key(dir)
	if err != nil {
		return "", err
	}
	return k + "/", nil
}

// pathOf maps an object key back to a backend path; ok is false for keys
// outside the layout (other prefixes, foreign objects at the prefix root).
func (s *S3) pathOf(key string) (string, bool) {
	rel, ok := strings.CutPrefix(key, s.root)
	if !ok {
		return "", false
	}
	if strings.HasPrefix(rel, chunkDir+"/") {
		return rel, true
	}
	if p, ok := strings.CutPrefix(rel, contentDir+"/"); ok && p != "" {
		return p, true
	}
	return "", false
}

// ---- error classification

func apiCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// isNotFound: a missing key. A missing bucket is a real error, not a missing
// file, where the server tells them apart.
func isNotFound(err error) bool {
	var nsk *types.NoSuchKey
	var nf *types.NotFound
	if errors.As(err, &nsk) || errors.As(err, &nf) {
		return true
	}
	switch apiCode(err) {
	case "NoSuchBucket":
		return false
	case "NoSuchKey", "NotFound":
		return true
	}
	return httpStatus(err) == http.StatusNotFound
}

func isPreconditionFailed(err error) bool {
	return apiCode(err) == "PreconditionFailed" || httpStatus(err) == http.StatusPreconditionFailed
}

func isConflict(err error) bool {
	return apiCode(err) == "ConditionalRequestConflict" || httpStatus(err) == http.StatusConflict
}

func isNotImplemented(err error) bool {
	return apiCode(err) == "NotImplemented" || httpStatus(err) == http.StatusNotImplemented
}

func (s *S3) wrap(op, name string, err error) error {
	if isNotFound(err) {
		return &iofs.PathError{Op: op, Path: name, Err: fmt.Errorf("%w (%v)", iofs.ErrNotExist, err)}
	}
	return &iofs.PathError{Op: op, Path: name, Err: err}
}

// ---- files

// ReadFile implements backend.Backend.
func (s *S3) ReadFile(ctx context.Context, name string) ([]byte, error) {
	return s.read(ctx, name, 0)
}

// ReadFileMax implements backend.MaxReader: an object larger than max is
// refused from its Content-Length, and the body is never read past max.
func (s *S3) ReadFileMax(ctx context.Context, name string, max int64) ([]byte, error) {
	if max <= 0 {
		return nil, fmt.Errorf("%w: read limit %d", backend.ErrInvalidPath, max)
	}
	return s.read(ctx, name, max)
}

func (s *S3) read(ctx context.Context, name string, max int64) ([]byte, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	var data []byte
	tooLarge := func() error {
		return fmt.Errorf("%s: more than the %d bytes allowed: %w", name, max, backend.ErrTooLarge)
	}
	err = s.do(ctx, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		n := aws.ToInt64(out.ContentLength)
		if max > 0 && n > max {
			return tooLarge()
		}
		var buf bytes.Buffer
		if n > 0 && n < 1<<31 {
			buf.Grow(int(n))
		}
		var body io.Reader = out.Body
		if max > 0 {
			body = io.LimitReader(out.Body, max+1)
		}
		if _, err := buf.ReadFrom(body); err != nil {
			return err
		}
		if max > 0 && int64(buf.Len()) > max {
			return tooLarge()
		}
		data = buf.Bytes()
		return nil
	})
	if errors.Is(err, backend.ErrTooLarge) {
		return nil, err
	}
	if err != nil {
		return nil, s.wrap("read", name, err)
	}
	return data, nil
}

// Open implements backend.Opener: one GetObject whose body is read as the
// caller goes. The request keeps its concurrency slot and timeout until
// Close; a failed read is the caller's to retry (the SDK retries only up to
// the response headers).
func (s *S3) Open(ctx context.Context, name string) (io.ReadCloser, error) {
	key, err := s.key(name)
	if err != nil {
		return nil, err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		cancel()
		<-s.sem
		return nil, s.wrap("read", name, err)
	}
	return &objectReader{ReadCloser: out.Body, size: aws.ToInt64(out.ContentLength), release: func() { cancel(); <-s.sem }}, nil
}

// objectReader is an object's body that gives back its request's slot once.
type objectReader struct {
	io.ReadCloser
	size    int64
	release func()
	once    sync.Once
}

// Size is the object's Content-Length, so callers can refuse an object
// too large for what it should be before reading it.
func (r *objectReader) Size() int64 { return r.size }

func (r *objectReader) Close() error {
	err := r.ReadCloser.Close()
	r.once.Do(r.release)
	return err
}

// WriteFile is a single PutObject, which S3 makes visible atomically.
func (s *S3) WriteFile(ctx context.Context, name string, data []byte) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	err = s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.bucket, Key: &key,
			Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		})
		return err
	})
	if err != nil {
		return s.wrap("write", name, err)
	}
	return nil
}

// partSize is the piece WriteFrom holds at once: one PutObject below it,
// a multipart upload of parts this size above (S3's minimum is 5 MiB).
const partSize = 8 << 20

// WriteFrom implements backend.StreamWriter. Content that fits one part is
// a PutObject as WriteFile; larger content is a multipart upload, which S3
// makes visible only once completed. An error, src's included, aborts it.
func (s *S3) WriteFrom(ctx context.Context, name string, src io.Reader) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	buf := make([]byte, partSize)
	n, err := io.ReadFull(src, buf)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return s.WriteFile(ctx, name, buf[:n])
	}
	if err != nil {
		return err
	}
	if err := s.multipart(ctx, key, buf, src); err != nil {
		return s.wrap("write", name, err)
	}
	return nil
}

// multipart uploads buf (a full first part) and the rest of src in parts
// of len(buf) bytes.
func (s *S3) multipart(ctx context.Context, key string, buf []byte, src io.Reader) (err error) {
	var id *string
	err = s.do(ctx, func(ctx context.Context) error {
		out, err := s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.bucket, Key: &key})
		if err == nil {
			id = out.UploadId
		}
		return err
	})
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			// Not cancelled with the write: an abandoned upload costs storage.
			_ = s.do(context.WithoutCancel(ctx), func(ctx context.Context) error {
				_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: &key, UploadId: id})
				return err
			})
		}
	}()
	var parts []types.CompletedPart
	n := len(buf)
	for num := int32(1); n > 0; num++ {
		part := buf[:n]
		var etag *string
		err := s.do(ctx, func(ctx context.Context) error {
			out, err := s.client.UploadPart(ctx, &s3.UploadPartInput{
				Bucket: &s.bucket, Key: &key, UploadId: id, PartNumber: aws.Int32(num),
				Body: bytes.NewReader(part), ContentLength: aws.Int64(int64(len(part))),
			})
			if err == nil {
				etag = out.ETag
			}
			return err
		})
		if err != nil {
			return err
		}
		parts = append(parts, types.CompletedPart{ETag: etag, PartNumber: aws.Int32(num)})
		var rerr error
		n, rerr = io.ReadFull(src, buf)
		if rerr != nil && !errors.Is(rerr, io.EOF) && !errors.Is(rerr, io.ErrUnexpectedEOF) {
			return rerr
		}
	}
	return s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
			Bucket: &s.bucket, Key: &key, UploadId: id,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
		})
		return err
	})
}

// CreateFile is a conditional PutObject (If-None-Match: *): 412 means
// someone else's object is already there — unless the SDK retried: an
// earlier attempt may have created the object and lost its response (a
// connection reset after the server handled it), and the retry then meets
// our own object. landed tells the two apart.
func (s *S3) CreateFile(ctx context.Context, name string, data []byte) (bool, error) {
	key, err := s.key(name)
	if err != nil {
		return false, err
	}
	start := time.Now()
	var sent atomic.Int32
	for attempt := 0; ; attempt++ {
		err = s.do(ctx, func(ctx context.Context) error {
			_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
				Bucket: &s.bucket, Key: &key, IfNoneMatch: aws.String("*"),
				Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
			}, countAttempts(&sent))
			return err
		})
		switch {
		case err == nil:
			return true, nil
		case isPreconditionFailed(err):
			if int(sent.Load()) <= attempt+1 {
				return false, nil // every request was answered: not ours
			}
			ours, err := s.landed(ctx, key, data, start)
			if err != nil {
				return false, s.wrap("create", name, err)
			}
			return ours, nil
		case isConflict(err) && attempt < createRetries:
			// A concurrent conditional write of the same key is in
			// progress; once it settles the answer is 412 or success.
			if err := sleep(ctx, time.Duration(attempt+1)*100*time.Millisecond); err != nil {
				return false, err
			}
			continue
		}
		return false, s.wrap("create", name, err)
	}
}

// countAttempts counts the HTTP attempts of one SDK call, retries
// included (a middleware right after the SDK's retry loop).
func countAttempts(n *atomic.Int32) func(*s3.Options) {
	return func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(st *smithymiddleware.Stack) error {
			return st.Finalize.Insert(smithymiddleware.FinalizeMiddlewareFunc("pbsqCountAttempts",
				func(ctx context.Context, in smithymiddleware.FinalizeInput, next smithymiddleware.FinalizeHandler) (smithymiddleware.FinalizeOutput, smithymiddleware.Metadata, error) {
					n.Add(1)
					return next.HandleFinalize(ctx, in)
				}), "Retry", smithymiddleware.After)
		})
	}
}

// landed reports whether the object at key holds data and was written
// since start (by the server's clock: LastModified against its Date), i.e.
// whether a conditional write refused on retry had in fact been done by
// the earlier attempt. A concurrent identical write in that window counts
// too, which is harmless: the object is as fresh as ours would be.
func (s *S3) landed(ctx context.Context, key string, data []byte, start time.Time) (bool, error) {
	var got []byte
	var modified, serverNow time.Time
	err := s.do(ctx, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		modified = aws.ToTime(out.LastModified)
		serverNow, _ = awsmiddleware.GetServerTime(out.ResultMetadata)
		got, err = io.ReadAll(out.Body)
		return err
	})
	if err != nil {
		return false, err
	}
	if !bytes.Equal(got, data) {
		return false, nil
	}
	if serverNow.IsZero() {
		serverNow = time.Now()
	}
	// Both times have one-second resolution on the wire.
	return !modified.Before(serverNow.Add(-time.Since(start) - 2*time.Second)), nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Stat implements backend.Backend: HeadObject, else a "directory" when any
// key lies below name/.
func (s *S3) Stat(ctx context.Context, name string) (backend.FileInfo, error) {
	if err := validPath(name); err != nil {
		return backend.FileInfo{}, err
	}
	if name == "" {
		return backend.FileInfo{Name: "", Dir: true}, nil
	}
	key, err := s.key(name)
	if err != nil {
		return backend.FileInfo{}, err
	}
	fi, err := s.headInfo(ctx, name, key)
	if err == nil {
		return fi, nil
	}
	if !isNotFound(err) {
		return backend.FileInfo{}, s.wrap("stat", name, err)
	}
	n, err := s.countBelow(ctx, key+"/", 1)
	if err != nil {
		return backend.FileInfo{}, s.wrap("stat", name, err)
	}
	if n == 0 {
		return backend.FileInfo{}, backend.NotExist(name)
	}
	return backend.FileInfo{Name: path.Base(name), Dir: true}, nil
}

// StatFile implements backend.FileStater: one HEAD, no directory check.
func (s *S3) StatFile(ctx context.Context, name string) (backend.FileInfo, error) {
	if err := validPath(name); err != nil {
		return backend.FileInfo{}, err
	}
	key, err := s.key(name)
	if err != nil {
		return backend.FileInfo{}, err
	}
	fi, err := s.headInfo(ctx, name, key)
	if isNotFound(err) {
		return backend.FileInfo{}, backend.NotExist(name)
	}
	if err != nil {
		return backend.FileInfo{}, s.wrap("stat", name, err)
	}
	return fi, nil
}

// headInfo is head as a FileInfo named after name.
func (s *S3) headInfo(ctx context.Context, name, key string) (backend.FileInfo, error) {
	out, err := s.head(ctx, key)
	if err != nil {
		return backend.FileInfo{}, err
	}
	return fileInfo(path.Base(name), aws.ToInt64(out.ContentLength), out.LastModified), nil
}

func fileInfo(name string, size int64, mtime *time.Time) backend.FileInfo {
	t := aws.ToTime(mtime)
	return backend.FileInfo{Name: name, Size: size, ModTime: t, AccessTime: t}
}

// countBelow counts keys below prefix, ignoring a "prefix" directory marker
// object, and stops at limit.
func (s *S3) countBelow(ctx context.Context, prefix string, limit int) (int, error) {
	n := 0
	// A page of no more than limit keys (plus a marker): a directory
	// check must not make the server list a whole namespace.
	err := s.listPagesMax(ctx, prefix, "", "", int32(min(limit+1, 1000)), func(out *s3.ListObjectsV2Output) bool {
		for _, o := range out.Contents {
			if aws.ToString(o.Key) != prefix {
				n++
			}
		}
		return n < limit
	})
	return n, err
}

// listPages pages through ListObjectsV2 with continuation tokens, holding a
// semaphore slot only per page so that page callbacks may issue requests.
func (s *S3) listPages(ctx context.Context, prefix, delim string, page func(*s3.ListObjectsV2Output) bool) error {
	return s.listPagesAfter(ctx, prefix, delim, "", page)
}

// listPagesAfter is listPages starting after the key startAfter.
func (s *S3) listPagesAfter(ctx context.Context, prefix, delim, startAfter string, page func(*s3.ListObjectsV2Output) bool) error {
	return s.listPagesMax(ctx, prefix, delim, startAfter, 0, page)
}

// listPagesMax is listPagesAfter with pages of at most maxKeys keys (0:
// the server's default, 1,000 on S3).
func (s *S3) listPagesMax(ctx context.Context, prefix, delim, startAfter string, maxKeys int32, page func(*s3.ListObjectsV2Output) bool) error {
	var token *string
	for {
		var out *s3.ListObjectsV2Output
		err := s.do(ctx, func(ctx context.Context) error {
			in := &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix, ContinuationToken: token}
			if startAfter != "" && token == nil {
				in.StartAfter = &startAfter
			}
			if delim != "" {
				in.Delimiter = &delim
			}
			if maxKeys > 0 {
				in.MaxKeys = &maxKeys
			}
			var err error
			out, err = s.client.ListObjectsV2(ctx, in)
			return err
		})
		if err != nil {
			return err
		}
		if !page(out) {
			return nil
		}
		if !aws.ToBool(out.IsTruncated) || aws.ToString(out.NextContinuationToken) == "" {
			return nil
		}
		token = out.NextContinuationToken
	}
}

// listDir returns the children below prefix (which ends in "/").
func (s *S3) listDir(ctx context.Context, prefix string) ([]backend.FileInfo, error) {
	var out []backend.FileInfo
	err := s.listPages(ctx, prefix, "/", func(page *s3.ListObjectsV2Output) bool {
		for _, cp := range page.CommonPrefixes {
			name := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), prefix), "/")
			if name != "" {
				out = append(out, backend.FileInfo{Name: name, Dir: true})
			}
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), prefix)
			if name == "" { // directory marker object
				continue
			}
			out = append(out, fileInfo(name, aws.ToInt64(o.Size), o.LastModified))
		}
		return true
	})
	return out, err
}

// List implements backend.Backend. The root shows ".chunks" (when any chunk
// exists) next to the children of .cnt/, as a filesystem datastore would.
func (s *S3) List(ctx context.Context, dir string) ([]backend.FileInfo, error) {
	if err := validPath(dir); err != nil {
		return nil, err
	}
	var out []backend.FileInfo
	if dir == "" {
		n, err := s.countBelow(ctx, s.root+chunkDir+"/", 1)
		if err != nil {
			return nil, s.wrap("list", dir, err)
		}
		if n > 0 {
			out = append(out, backend.FileInfo{Name: chunkDir, Dir: true})
		}
		cnt, err := s.listDir(ctx, s.root+contentDir+"/")
		if err != nil {
			return nil, s.wrap("list", dir, err)
		}
		out = append(out, cnt...)
	} else {
		prefix, err := s.dirPrefix(dir)
		if err != nil {
			return nil, err
		}
		out, err = s.listDir(ctx, prefix)
		if err != nil {
			return nil, s.wrap("list", dir, err)
		}
		if len(out) == 0 {
			return nil, backend.NotExist(dir)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Walk implements backend.Backend with flat listings (no delimiter).
func (s *S3) Walk(ctx context.Context, dir string, fn func(backend.FileInfo) error) error {
	if err := validPath(dir); err != nil {
		return err
	}
	var prefixes []string
	if dir == "" {
		prefixes = []string{s.root + chunkDir + "/", s.root + contentDir + "/"}
	} else {
		p, err := s.dirPrefix(dir)
		if err != nil {
			return err
		}
		prefixes = []string{p}
	}
	for _, prefix := range prefixes {
		if err := s.walkKeys(ctx, dir, prefix, "", fn); err != nil {
			return err
		}
	}
	return nil
}

// walkKeys calls fn for every file below prefix (of dir, for messages), in
// key order, starting after the key startAfter ("": from the first);
// directory marker objects and keys no path names are passed over.
func (s *S3) walkKeys(ctx context.Context, dir, prefix, startAfter string, fn func(backend.FileInfo) error) error {
	var fnErr error
	err := s.listPagesAfter(ctx, prefix, "", startAfter, func(page *s3.ListObjectsV2Output) bool {
		for _, o := range page.Contents {
			key := aws.ToString(o.Key)
			if strings.HasSuffix(key, "/") {
				continue // directory marker object
			}
			name, ok := s.pathOf(key)
			if !ok {
				continue
			}
			if fnErr = fn(fileInfo(name, aws.ToInt64(o.Size), o.LastModified)); fnErr != nil {
				return false
			}
		}
		return ctx.Err() == nil
	})
	if fnErr != nil {
		return fnErr
	}
	if err != nil {
		return s.wrap("walk", dir, err)
	}
	return ctx.Err()
}

// Remove implements backend.Backend; S3 deletes of missing keys succeed.
func (s *S3) Remove(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	err = s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key})
		return err
	})
	if err != nil && !isNotFound(err) {
		return s.wrap("remove", name, err)
	}
	return nil
}

// RemoveAll lists everything below dir/ (plus dir itself, should it be a
// file) and deletes it in DeleteObjects batches of at most 1000 keys.
func (s *S3) RemoveAll(ctx context.Context, dir string) error {
	if err := validPath(dir); err != nil {
		return err
	}
	if dir == "" {
		return fmt.Errorf("%w: refusing to remove the datastore root", backend.ErrInvalidPath)
	}
	prefix, err := s.dirPrefix(dir)
	if err != nil {
		return err
	}
	// Collect first, then delete: deleting while paging would rely on how a
	// server builds its continuation tokens.
	keys := []string{strings.TrimSuffix(prefix, "/")}
	err = s.listPages(ctx, prefix, "", func(page *s3.ListObjectsV2Output) bool {
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
		return true
	})
	if err != nil {
		return s.wrap("removeall", dir, err)
	}
	return s.deleteKeys(ctx, dir, keys)
}

// RemoveFiles deletes many files in DeleteObjects batches of at most 1000;
// missing files are no error (as Remove).
func (s *S3) RemoveFiles(ctx context.Context, names []string) error {
	keys := make([]string, 0, len(names))
	for _, n := range names {
		if err := validPath(n); err != nil {
			return err
		}
		if n == "" {
			return fmt.Errorf("%w: empty file name", backend.ErrInvalidPath)
		}
		k, err := s.key(n)
		if err != nil {
			return err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil
	}
	return s.deleteKeys(ctx, names[0], keys)
}

// deleteKeys deletes keys in parallel batches.
func (s *S3) deleteKeys(ctx context.Context, name string, keys []string) error {
	var batches [][]string
	for len(keys) > 0 {
		n := min(len(keys), maxDeleteBatch)
		batches = append(batches, keys[:n])
		keys = keys[n:]
	}
	errs := make(chan error, len(batches))
	for _, b := range batches {
		go func() { errs <- s.deleteBatch(ctx, b) }()
	}
	var all []error
	for range batches {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	if err := errors.Join(all...); err != nil {
		return s.wrap("removeall", name, err)
	}
	return nil
}

func (s *S3) deleteBatch(ctx context.Context, keys []string) error {
	objs := make([]types.ObjectIdentifier, len(keys))
	for i := range keys {
		objs[i] = types.ObjectIdentifier{Key: &keys[i]}
	}
	var out *s3.DeleteObjectsOutput
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.client.DeleteObjects(ctx, &s3.DeleteObjectsInput{
			Bucket: &s.bucket,
			Delete: &types.Delete{Objects: objs, Quiet: aws.Bool(true)},
		})
		return err
	})
	if err != nil {
		return err
	}
	// DeleteObjects succeeds as a whole while failing per key.
	var errs []error
	for _, e := range out.Errors {
		if code := aws.ToString(e.Code); code == "NoSuchKey" {
			continue
		} else {
			errs = append(errs, fmt.Errorf("delete %q: %s: %s", aws.ToString(e.Key), code, aws.ToString(e.Message)))
		}
	}
	return errors.Join(errs...)
}

// Mkdir is a no-op: directories are implicit.
func (s *S3) Mkdir(ctx context.Context, dir string) error {
	return validPath(dir)
}

// RemoveDir reports ErrNotEmpty while anything lies below dir/; otherwise
// there is nothing to remove except a foreign "dir/" marker object.
func (s *S3) RemoveDir(ctx context.Context, dir string) error {
	if err := validPath(dir); err != nil {
		return err
	}
	if dir == "" {
		return fmt.Errorf("%w: refusing to remove the datastore root", backend.ErrInvalidPath)
	}
	prefix, err := s.dirPrefix(dir)
	if err != nil {
		return err
	}
	n, err := s.countBelow(ctx, prefix, 1)
	if err != nil {
		return s.wrap("rmdir", dir, err)
	}
	if n > 0 {
		return fmt.Errorf("%s: %w", dir, backend.ErrNotEmpty)
	}
	err = s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &prefix})
		return err
	})
	if err != nil && !isNotFound(err) {
		return s.wrap("rmdir", dir, err)
	}
	return nil
}

// Rename moves one file (copy + delete; not atomic). Directories are not
// supported: the datastore moves S3 snapshots file by file. Like the fs
// backend it refuses to replace an existing target.
func (s *S3) Rename(ctx context.Context, from, to string) error {
	src, err := s.key(from)
	if err != nil {
		return err
	}
	dst, err := s.key(to)
	if err != nil {
		return err
	}
	if _, err := s.head(ctx, src); err != nil {
		if !isNotFound(err) {
			return s.wrap("rename", from, err)
		}
		if n, lerr := s.countBelow(ctx, src+"/", 1); lerr == nil && n > 0 {
			return fmt.Errorf("rename %s: directory: %w", from, backend.ErrNotSupported)
		}
		return s.wrap("rename", from, err)
	}
	if _, err := s.head(ctx, dst); err == nil {
		return &iofs.PathError{Op: "rename", Path: to, Err: iofs.ErrExist}
	} else if !isNotFound(err) {
		return s.wrap("rename", to, err)
	}
	start := time.Now()
	var sent atomic.Int32
	if err := s.copy(ctx, src, dst, true, &sent); err != nil {
		if !isPreconditionFailed(err) {
			return s.wrap("rename", from, err)
		}
		// A retried copy may have met the one its first attempt made.
		ours := false
		if sent.Load() > 1 {
			data, err := s.ReadFile(ctx, from)
			if err != nil {
				return fmt.Errorf("rename %s: %w", from, err)
			}
			if ours, err = s.landed(ctx, dst, data, start); err != nil {
				return s.wrap("rename", to, err)
			}
		}
		if !ours {
			return &iofs.PathError{Op: "rename", Path: to, Err: iofs.ErrExist}
		}
	}
	if err := s.Remove(ctx, from); err != nil {
		return fmt.Errorf("rename %s: copied to %s but %w", from, to, err)
	}
	return nil
}

func (s *S3) head(ctx context.Context, key string) (*s3.HeadObjectOutput, error) {
	var out *s3.HeadObjectOutput
	err := s.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
		return err
	})
	return out, err
}

// copySource is the URL-escaped "bucket/key" that CopyObject wants. Every
// byte but unreserved ones and '/' is escaped (':' from snapshot times
// included), which all servers decode the same way; url.PathEscape would
// leave '+', which some servers decode as a space.
func copySource(bucket, key string) string {
	var b strings.Builder
	for _, c := range []byte(bucket + "/" + key) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '_', c == '.', c == '~', c == '/':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// copy is a server-side CopyObject; noReplace asks the server to refuse an
// existing destination (retried without for servers that lack it).
// sent, if not nil, counts the HTTP attempts.
func (s *S3) copy(ctx context.Context, src, dst string, noReplace bool, sent *atomic.Int32) error {
	in := &s3.CopyObjectInput{Bucket: &s.bucket, Key: &dst, CopySource: aws.String(copySource(s.bucket, src))}
	if noReplace {
		in.IfNoneMatch = aws.String("*")
	}
	var opts []func(*s3.Options)
	if sent != nil {
		opts = append(opts, countAttempts(sent))
	}
	err := s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.CopyObject(ctx, in, opts...)
		return err
	})
	if err != nil && noReplace && isNotImplemented(err) {
		in.IfNoneMatch = nil
		err = s.do(ctx, func(ctx context.Context) error {
			_, err := s.client.CopyObject(ctx, in)
			return err
		})
	}
	return err
}

// Copy implements backend.Backend with a server-side copy.
func (s *S3) Copy(ctx context.Context, from, to string) error {
	src, err := s.key(from)
	if err != nil {
		return err
	}
	dst, err := s.key(to)
	if err != nil {
		return err
	}
	if err := s.copy(ctx, src, dst, false, nil); err != nil {
		return s.wrap("copy", from, err)
	}
	return nil
}

// Touch copies the object onto itself with new metadata, which is how S3
// updates LastModified (what GC reads as the access time). Some servers
// (versitygw's posix backend) only rewrite the metadata and keep the old
// LastModified; Touch notices that from the copy result and from then on
// rewrites such objects instead.
func (s *S3) Touch(ctx context.Context, name string) error {
	key, err := s.key(name)
	if err != nil {
		return err
	}
	if s.touchRewrite.Load() {
		return s.rewrite(ctx, name, key)
	}
	var out *s3.CopyObjectOutput
	err = s.do(ctx, func(ctx context.Context) error {
		var err error
		out, err = s.client.CopyObject(ctx, &s3.CopyObjectInput{
			Bucket: &s.bucket, Key: &key,
			CopySource:        aws.String(copySource(s.bucket, key)),
			MetadataDirective: types.MetadataDirectiveReplace,
		})
		return err
	})
	if err != nil {
		return s.wrap("touch", name, err)
	}
	if s.copyKeptTime(out) {
		return s.rewrite(ctx, name, key)
	}
	return nil
}

// copyKeptTime reports whether a self-copy left LastModified as it was, so
// the object must be rewritten to be touched.
func (s *S3) copyKeptTime(out *s3.CopyObjectOutput) bool {
	if out.CopyObjectResult == nil || out.CopyObjectResult.LastModified == nil {
		return false
	}
	serverNow, ok := awsmiddleware.GetServerTime(out.ResultMetadata)
	if !ok {
		return false
	}
	// A server that updates LastModified returns about the time of its Date
	// header. The Date header has one-second resolution and may lag by up
	// to a second where servers cache it (fasthttp), so a LastModified a
	// second behind it was not updated by this copy: rewrite this object.
	// Two seconds behind is certain: rewrite from now on.
	behind := serverNow.Sub(out.CopyObjectResult.LastModified.Truncate(time.Second))
	if behind >= 2*time.Second {
		s.touchRewrite.Store(true)
	}
	return behind >= time.Second
}

// rewrite puts an object's content again, to refresh its LastModified. The
// If-Match keeps it from undoing a concurrent change (which refreshed the
// object anyway).
func (s *S3) rewrite(ctx context.Context, name, key string) error {
	data, etag, err := s.getObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return s.wrap("touch", name, err)
	}
	return s.putIfMatch(ctx, name, key, data, etag)
}

// getObject reads a whole object and its ETag.
func (s *S3) getObject(ctx context.Context, in *s3.GetObjectInput) (data []byte, etag *string, err error) {
	err = s.do(ctx, func(ctx context.Context) error {
		out, err := s.client.GetObject(ctx, in)
		if err != nil {
			return err
		}
		defer out.Body.Close()
		etag = out.ETag
		data, err = io.ReadAll(out.Body)
		return err
	})
	return data, etag, err
}

// putIfMatch writes data back over key unless it changed since it was read.
func (s *S3) putIfMatch(ctx context.Context, name, key string, data []byte, etag *string) error {
	err := s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.bucket, Key: &key, IfMatch: etag,
			Body: bytes.NewReader(data), ContentLength: aws.Int64(int64(len(data))),
		})
		return err
	})
	if err != nil && !isPreconditionFailed(err) {
		return s.wrap("touch", name, err)
	}
	return nil
}

// CheckBucket verifies that the bucket exists and the credentials may list
// the prefix, with errors that say what to fix.
func (s *S3) CheckBucket(ctx context.Context) error {
	// Few attempts: an unreachable endpoint should be reported in seconds.
	fewRetries := func(o *s3.Options) { o.Retryer = retry.AddWithMaxAttempts(o.Retryer, 2) }
	err := s.do(ctx, func(ctx context.Context) error {
		_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: &s.bucket}, fewRetries)
		return err
	})
	if err == nil {
		err = s.do(ctx, func(ctx context.Context) error {
			_, err := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
				Bucket: &s.bucket, Prefix: aws.String(s.root), MaxKeys: aws.Int32(1),
			}, fewRetries)
			return err
		})
	}
	if err == nil {
		return nil
	}
	return s.explain(err)
}

func (s *S3) explain(err error) error {
	code, status := apiCode(err), httpStatus(err)
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case code == "NoSuchBucket" || (status == http.StatusNotFound && code != "NoSuchKey"):
		return fmt.Errorf("%s: %w: bucket %q does not exist (create it first): %w", s, ErrBucketNotFound, s.bucket, err)
	case status == http.StatusForbidden || status == http.StatusUnauthorized ||
		code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" ||
		code == "InvalidToken" || code == "ExpiredToken" || isCredentialsError(err):
		return fmt.Errorf("%s: %w: check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile (AWS_PROFILE) and the bucket policy: %w", s, ErrAccessDenied, err)
	case errors.As(err, &dnsErr), errors.As(err, &opErr), errors.As(err, &netErr),
		errors.Is(err, context.DeadlineExceeded), status == 0 && code == "":
		return fmt.Errorf("%s: %w: check the endpoint URL and network: %w", s, ErrUnreachable, err)
	}
	return fmt.Errorf("%s: checking bucket: %w", s, err)
}

// isCredentialsError: the SDK found no credentials at all.
func isCredentialsError(err error) bool {
	var se *v4.SigningError
	return errors.As(err, &se) || strings.Contains(err.Error(), "failed to retrieve credentials")
}
