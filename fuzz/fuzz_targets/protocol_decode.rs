//! Fuzz target: the wire protocol decoder on arbitrary bytes, as the daemon and llmctl meet it:
//! frames decoded as a handshake, a request and a response. Whatever decodes must encode back
//! to a frame that decodes to the same message (compared as bytes: NaN floats are not equal
//! to themselves), and the request checks every front end applies
//! (`GenerateRequest::validate`, `TokenizeRequest::validate`) must not panic. Any panic, abort
//! or oversized allocation is a bug.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run protocol_decode` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llmd_shared::{decode_frame, encode_frame, Hello, Request, Response};

/// Decodes `data` as one `T` (with and without the length prefix checked against the input),
/// and checks the round trip.
fn check<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    if let Ok((msg, used)) = decode_frame::<T>(data) {
        assert!(used <= data.len());
        let again = encode_frame(&msg).expect("a decoded message encodes");
        let (back, _) = decode_frame::<T>(&again).expect("its encoding decodes");
        assert_eq!(encode_frame(&back).expect("encodes"), again);
    }
    // The payload alone, as if a valid prefix announced exactly these bytes.
    let _ = llmd_shared::frame::decode_payload::<T>(data);
}

fuzz_target!(|data: &[u8]| {
    check::<Hello>(data);
    check::<Response>(data);
    check::<Request>(data);
    if let Ok(request) = llmd_shared::frame::decode_payload::<Request>(data) {
        match &request {
            Request::Generate(g) => {
                let _ = g.validate();
            }
            Request::Tokenize(t) => {
                let _ = t.validate();
            }
            _ => {}
        }
    }
});
