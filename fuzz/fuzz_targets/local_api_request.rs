//! meshd's local control socket: any request line is decoded or refused with a message, never
//! a panic; a decoded request prints as one line that decodes to the same request.
#![no_main]

use control::local_api::{decode_request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(request) => {
            let line = serde_json::to_string(&request).expect("a request prints");
            assert!(!line.contains('\n'), "a request prints on one line");
            assert_eq!(decode_request(line.as_bytes()), Ok(request));
        }
        Err(message) => {
            let line =
                serde_json::to_string(&Response::Error { message }).expect("a refusal prints");
            assert!(!line.contains('\n'), "a refusal prints on one line");
        }
    }
});
