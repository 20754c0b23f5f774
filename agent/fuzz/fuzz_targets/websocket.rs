//! Bytes from a client → WebSocket frames as the agent's API reads them (tungstenite in the
//! server role with the configuration axum gives the agent: its default) → each binary message
//! turned into an attach frame the way the attach bridge does (first byte the kind, the rest the
//! payload) → the supervisor's frame decoder. Never a panic; a frame the bridge forwards
//! decodes on the supervisor's side to the same kind and payload.
#![no_main]

use std::io::{Cursor, Read, Write};

use bolt_agent::wire::frame::{encode, Decoder};
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};

/// A client that sent `data` and reads nothing back.
struct Peer(Cursor<Vec<u8>>);

impl Read for Peer {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let peer = Peer(Cursor::new(data.to_vec()));
    let mut ws = WebSocket::from_raw_socket(peer, Role::Server, Some(WebSocketConfig::default()));
    let mut supervisor = Decoder::default();
    for _ in 0..1024 {
        let msg = match ws.read() {
            Ok(m) => m,
            Err(_) => break,
        };
        let Message::Binary(b) = msg else { continue };
        let Some((&kind, payload)) = b.split_first() else {
            continue;
        };
        supervisor.push(&encode(kind, payload));
        let got = supervisor.next_frame();
        assert_eq!(
            got,
            Ok(Some((kind, payload.to_vec()))),
            "a binary message of {} bytes does not cross the attach bridge",
            b.len()
        );
    }
});
