//! `shoal-udp-echo`: a UDP echo for the networking tests, since the demo image's busybox has
//! no UDP server (Debian's busybox `nc` has no `-u`).
//!
//! - `shoal-udp-echo serve PORT`: answers every datagram with `HOSTNAME DATAGRAM`, so a reply
//!   names the container that answered.
//! - `shoal-udp-echo send ADDR:PORT MESSAGE`: sends MESSAGE from a new socket (a new source
//!   port, so a new flow for the routing mesh), prints the reply and exits 0, or exits 1 when
//!   none comes within 2 s.

use std::net::UdpSocket;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1..).unwrap_or_default() {
        [cmd, port] if cmd == "serve" => serve(port),
        [cmd, addr, message] if cmd == "send" => send(addr, message),
        _ => Err("usage: shoal-udp-echo serve PORT | send ADDR:PORT MESSAGE".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-udp-echo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(port: &str) -> Result<(), String> {
    let socket = UdpSocket::bind(format!("0.0.0.0:{port}")).map_err(|e| format!("bind: {e}"))?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| format!("recv: {e}"))?;
        let mut reply = format!("{hostname} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        // A client that went away is not the server's problem.
        let _ = socket.send_to(&reply, from);
    }
}

fn send(addr: &str, message: &str) -> Result<(), String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| format!("timeout: {e}"))?;
    socket
        .send_to(message.as_bytes(), addr)
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut buf = [0u8; 2048];
    let (n, _) = socket
        .recv_from(&mut buf)
        .map_err(|e| format!("no reply from {addr}: {e}"))?;
    println!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}
