//! A raw HTTP/2 gRPC caller that does what a hostile or broken client does and a real gRPC library never would:
//! never reads its answers (no WINDOW_UPDATE), or never ends its requests (no END_STREAM).

use bytes::Bytes;
use h2::client::SendRequest;
use prost::Message;
use tokio::net::TcpStream;

/// One HTTP/2 connection to a server's gRPC port.
pub struct RawCaller {
    send: SendRequest<Bytes>,
    port: u16,
    token: Option<String>,
}

/// One call's streams, kept open for as long as this lives (the response is never read).
pub struct OpenCall {
    /// The status of a trailers-only answer (a refusal); `None` when a response body is on its way.
    pub refusal: Option<tonic::Status>,
    _request: h2::SendStream<Bytes>,
    _response: h2::RecvStream,
}

impl RawCaller {
    /// Connects to 127.0.0.1:`port`, sending `token` as a bearer token when given. The connection's and each
    /// stream's receive windows stay at the protocol's 64 KiB and are never reopened.
    pub async fn connect(port: u16, token: Option<&str>) -> RawCaller {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (send, connection) = h2::client::handshake(tcp).await.unwrap();
        // Driving the connection answers pings and SETTINGS; it releases no receive capacity by itself.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        RawCaller {
            send,
            port,
            token: token.map(str::to_owned),
        }
    }

    /// Starts a call of `rpc` with `body` (whole gRPC frames, see [`grpc_frame`]) sent with END_STREAM when `end`
    /// is set and left open otherwise; `None` when the connection is gone.
    pub async fn start(&mut self, rpc: &str, body: Bytes, end: bool) -> Option<PendingCall> {
        let mut request = http::Request::post(format!(
            "http://127.0.0.1:{}/cachecoord.v1.CacheService/{rpc}",
            self.port
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        self.send = self.send.clone().ready().await.ok()?;
        let (response, mut request) = self
            .send
            .send_request(request.body(()).unwrap(), false)
            .ok()?;
        // h2 queues the body and sends it as the server's window allows. The server may already have answered
        // from the headers and reset the stream (a caller without a token, on a loaded machine): the body then
        // goes nowhere, and the answer is still read from `response`.
        let _ = request.send_data(body, end);
        Some(PendingCall { response, request })
    }
}

/// A call whose response headers have not been read yet.
pub struct PendingCall {
    response: h2::client::ResponseFuture,
    request: h2::SendStream<Bytes>,
}

impl PendingCall {
    /// Waits for the response headers; `None` when the stream or connection failed first.
    pub async fn answer(self) -> Option<OpenCall> {
        let response = self.response.await.ok()?;
        Some(OpenCall {
            refusal: tonic::Status::from_header_map(response.headers()),
            _request: self.request,
            _response: response.into_body(),
        })
    }
}

/// `message` as one gRPC frame: uncompressed flag, big-endian length, bytes.
pub fn grpc_frame(message: &impl Message) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + encoded.len());
    frame.push(0);
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    Bytes::from(frame)
}

/// The process's resident set now and at its peak, in bytes (VmRSS and VmHWM).
pub fn resident_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap()
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}
