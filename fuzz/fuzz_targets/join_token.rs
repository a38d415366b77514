//! Join tokens: any input is parsed or refused with an error, never a panic, and a token
//! that parses prints back to a string that parses to the same token.
#![no_main]

use control::cluster::token::JoinToken;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = JoinToken::parse(text) {
        let again = JoinToken::parse(&token.to_string()).expect("a printed token parses");
        assert_eq!(again, token);
    }
});
