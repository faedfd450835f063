//! The bodies of an admitted call. The request body is charged to the call's budget as its frames arrive and must
//! end within `limits.request_body_timeout_ms`; the response body keeps the call's budget (slot and bytes) until
//! it has been sent in full or abandoned, and tells the connection's sweeper it is unsent meanwhile.

use super::budget::CallBudget;
use super::connection::Sending;
use crate::Error;
use crate::api::to_status;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::body::Body as GrpcBody;

/// A request body whose bytes count against its call's budget (when it has one: health and reflection calls do
/// not) and that must end by a deadline.
pub(super) struct RequestBody {
    body: GrpcBody,
    budget: Option<Arc<CallBudget>>,
    deadline: Instant,
    timeout: Duration,
    /// Armed only when the body makes the call wait: most requests arrive whole in their first poll.
    timer: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    pub(super) fn new(
        body: GrpcBody,
        budget: Option<Arc<CallBudget>>,
        timeout: Duration,
    ) -> RequestBody {
        RequestBody {
            body,
            budget,
            deadline: Instant::now() + timeout,
            timeout,
            timer: None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(budget)) = (frame.data_ref(), &this.budget) {
                    budget.hold(data.len()).map_err(|e| to_status(&e))?;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(to_status(&Error::RequestBodyTimeout {
                    timeout: this.timeout,
                }))))
            }
            done => done,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The most a response body hands HTTP/2 at once. HTTP/2 takes a chunk as soon as the peer's window has room for
/// one byte of it, and buffers the rest itself; a response handed over whole would leave the body (and give back
/// its budget) while its bytes wait in HTTP/2 for a peer that never reads. Handed over in chunks, the body lives
/// until all but its last chunk is sent.
const CHUNK: usize = 16 * 1024;

/// A response body that keeps its call's budget until it is dropped: sent (all but its last chunk), or
/// abandoned.
pub(super) struct ResponseBody {
    body: GrpcBody,
    /// The rest of a data frame larger than [`CHUNK`].
    rest: Bytes,
    _budget: Arc<CallBudget>,
    sending: Option<Sending>,
}

impl ResponseBody {
    pub(super) fn new(
        body: GrpcBody,
        budget: Arc<CallBudget>,
        sending: Option<Sending>,
    ) -> ResponseBody {
        ResponseBody {
            body,
            rest: Bytes::new(),
            _budget: budget,
            sending,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if let Some(sending) = &this.sending
            && !sending.connection().may_hand(cx)
        {
            return Poll::Pending;
        }
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                done => return Poll::Ready(done),
            }
        }
        let chunk = this.rest.split_to(this.rest.len().min(CHUNK));
        if let Some(sending) = &this.sending {
            sending.connection().handed(chunk.len());
            sending.progressed();
        }
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}
