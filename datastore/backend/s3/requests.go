package s3

import (
	"context"
	"strconv"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	smithymiddleware "github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// WithRequestHook calls fn for every HTTP request the client sends,
// retries included, with the operation (GetObject, PutObject, ...) and
// the status code ("error" when no response came back), e.g. for
// pbsq_s3_requests_total.
func WithRequestHook(fn func(op, code string)) Option {
	return func(o *s3.Options) {
		o.APIOptions = append(o.APIOptions, func(st *smithymiddleware.Stack) error {
			// Deserialize runs once per attempt, below the retry loop.
			return st.Deserialize.Add(smithymiddleware.DeserializeMiddlewareFunc("pbsqRequestHook",
				func(ctx context.Context, in smithymiddleware.DeserializeInput, next smithymiddleware.DeserializeHandler) (smithymiddleware.DeserializeOutput, smithymiddleware.Metadata, error) {
					out, md, err := next.HandleDeserialize(ctx, in)
					code := "error"
					if r, ok := out.RawResponse.(*smithyhttp.Response); ok && r != nil {
						code = strconv.Itoa(r.StatusCode)
					}
					fn(awsmiddleware.GetOperationName(ctx), code)
					return out, md, err
				}), smithymiddleware.After)
		})
	}
}
