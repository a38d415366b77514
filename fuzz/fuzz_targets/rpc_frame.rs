//! The cluster port's framing (TCP 2377, inside TLS): a byte stream is read frame by frame as
//! the server reads it (4-byte length, limit, JSON `Request`) until it ends or is refused,
//! never a panic; a decoded request framed again reads back the same.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use control::rpc::frame::{self, FrameError, MAX_FRAME};
use control::rpc::messages::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    loop {
        let before = stream.len();
        match ready(frame::read::<_, Request>(&mut stream)) {
            Ok(Some(request)) => {
                assert!(before - stream.len() <= 4 + MAX_FRAME);
                let mut framed = Vec::new();
                ready(frame::write(&mut framed, &request)).expect("a request frames");
                let again: Request = ready(frame::read(&mut &framed[..]))
                    .expect("a framed request reads")
                    .expect("a frame is there");
                assert_eq!(
                    serde_json::to_value(&again).expect("a request prints"),
                    serde_json::to_value(&request).expect("a request prints")
                );
            }
            Ok(None) => return,
            Err(FrameError::TooLarge { size, limit }) => {
                assert!(size > limit && limit == MAX_FRAME);
                return;
            }
            // The server answers "unreadable request" and closes.
            Err(_) => return,
        }
    }
});

/// Runs a future over in-memory I/O, which never waits.
fn ready<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("in-memory I/O waited"),
    }
}
