//! An envelope-mode backend for siplb: a simple UAS the balancer connects to.
//!
//! INVITE → 100, 180, 200 (after `--answer-delay-ms`); ACK → nothing; BYE → 200; CANCEL → 200
//! and 487 to the INVITE while it rings; OPTIONS → 200; an in-dialog request for an unknown call
//! → 481. Every message it sends carries `X-Backend: NAME`, so a client can check that a call
//! stayed on one backend, and every envelope reports its load (calls in progress). It prints
//! `envelope-backend name=NAME listening=ADDR` once bound, and its counters as one line on
//! SIGTERM / SIGINT.
//!
//! Answered dialogs outlive the balancer connection they were set up on: when a restarted
//! balancer connects again, their BYEs and re-INVITEs are still answered (`uas::keep`).
//! An in-dialog request with `X-Hang-Up: now` makes it end that call with a BYE of its own
//! after the answer (`uas::hangup`).
//!
//! One thread per balancer connection: a balancer keeps one connection per backend, so there is
//! nothing to gain from an event loop here.
//!
//! With `--plain` it speaks plain SIP over TCP instead, without the envelope, with the same
//! answers (see `plain.rs`).

mod plain;
mod throttle;
mod uas;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use lb_backend::{BackendConn, Received};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::uas::{Counters, Uas};

/// A simple SIP UAS behind siplb in envelope mode.
#[derive(Parser, Debug)]
#[command(name = "envelope-backend")]
struct Args {
    /// Address to listen on for the balancer (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:5070")]
    listen: SocketAddr,
    /// Name put in `X-Backend` and in the Contact user part.
    #[arg(long, default_value = "b1")]
    name: String,
    /// Delay before the 200 OK to an INVITE, in milliseconds (above T1 = 500 makes ringing
    /// calls visible to CANCEL and retransmissions).
    #[arg(long, default_value_t = 0)]
    answer_delay_ms: u64,
    /// Plain SIP over TCP, no envelope: an ordinary UAS for a balancer's plain backends
    /// (`--backend ADDR`) or any other proxy; dialogs are kept per backend, not per connection.
    #[arg(long)]
    plain: bool,
    /// Take at most N INVITEs per second; past that, stop reading from the balancer (an
    /// overloaded server, for the overload benchmark) [default: no limit]
    #[arg(long, value_name = "N")]
    max_rate: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    let counters = Arc::new(Counters::default());
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(
            stdout,
            "envelope-backend name={} listening={local}",
            args.name
        )?;
        stdout.flush()?;
    }
    let config = Arc::new((
        args.name.clone(),
        local.to_string(),
        Duration::from_millis(args.answer_delay_ms),
    ));
    if args.plain {
        // The counters live as long as the process, as the plain UAS that borrows them does.
        let counters: &'static Counters = Box::leak(Box::new(Arc::clone(&counters)));
        std::thread::spawn(move || {
            let (name, host, delay) = &*config;
            plain::serve(&listener, name, host, *delay, counters);
        });
    } else {
        let counters = Arc::clone(&counters);
        let throttle = args.max_rate.filter(|r| *r > 0.0).map(|rate| {
            Arc::new(std::sync::Mutex::new(throttle::Throttle::new(
                rate,
                Instant::now(),
            )))
        });
        std::thread::spawn(move || accept_loop(&listener, &config, &counters, throttle));
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    let _ = signals.forever().next();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "envelope-backend name={}{}",
        args.name,
        counters.line()
    )?;
    stdout.flush()?;
    Ok(())
}

fn accept_loop(
    listener: &TcpListener,
    config: &Arc<(String, String, Duration)>,
    counters: &Arc<Counters>,
    throttle: Option<Arc<std::sync::Mutex<throttle::Throttle>>>,
) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let config = Arc::clone(config);
        let counters = Arc::clone(counters);
        let throttle = throttle.clone();
        std::thread::spawn(move || {
            let (name, host, delay) = &*config;
            let served = match throttle {
                Some(t) => throttle::serve_throttled(stream, name, host, *delay, &counters, &t),
                None => serve(stream, name, host, *delay, &counters),
            };
            if let Err(e) = served {
                eprintln!("envelope-backend {name}: {e}");
            }
        });
    }
}

/// Answers one balancer connection until it closes.
fn serve(
    stream: TcpStream,
    name: &str,
    contact_host: &str,
    answer_delay: Duration,
    counters: &Counters,
) -> Result<(), lb_backend::BackendError> {
    let mut conn = BackendConn::new(stream)?;
    // Its answered dialogs outlive the connection: a restarted balancer's new connection
    // takes them over (`uas::keep`).
    let mut uas = uas::keep::Keeping::new(Uas::new(name, contact_host, answer_delay, counters));
    let mut out = Vec::new();
    loop {
        match conn.recv_until(uas.poll_timeout())? {
            Received::Message(inbound) => {
                uas.handle(Instant::now(), inbound.source, inbound.sip, &mut out);
            }
            Received::Deadline => uas.handle_timeout(Instant::now(), &mut out),
            Received::Closed => return Ok(()),
        }
        let load = Some(uas.load());
        counters.sent.fetch_add(out.len() as u64, Ordering::Relaxed);
        for (next_hop, sip) in out.drain(..) {
            conn.queue(next_hop, load, &sip);
        }
        conn.flush()?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};

    use bytes::BytesMut;
    use lb_backend::sip::Message;
    use lb_core::envelope::{encode_header, Envelope, EnvelopeDecoder, Transport};

    use super::*;

    /// The backend behind a real socket, driven by a test balancer speaking envelopes.
    #[test]
    fn answers_a_call_over_envelopes() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counters: &'static Counters = Box::leak(Box::default());
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream, "bx", "127.0.0.1:1", Duration::ZERO, counters)
        });
        let mut balancer = TcpStream::connect(addr).unwrap();
        let frontend: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        let invite = "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
            From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: k1\r\nCSeq: 1 INVITE\r\n\
            Content-Length: 0\r\n\r\n";
        let mut bytes = BytesMut::new();
        let envelope = Envelope {
            addr: Some(frontend),
            transport: Transport::Tcp,
            load: None,
        };
        encode_header(&mut bytes, &envelope, invite.len());
        bytes.extend_from_slice(invite.as_bytes());
        balancer.write_all(&bytes).unwrap();

        let mut decoder = EnvelopeDecoder::default();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 3 {
            if let Some(next) = decoder.next_envelope(64 * 1024) {
                got.push(next.unwrap());
                continue;
            }
            let n = balancer.read(&mut buf).unwrap();
            assert!(n > 0, "backend closed early");
            decoder.push(BytesMut::from(&buf[..n]));
        }
        let codes: Vec<u16> = got
            .iter()
            .map(|(_, sip)| Message::parse(sip).unwrap().status().unwrap())
            .collect();
        assert_eq!(codes, [100, 180, 200]);
        for (env, sip) in &got {
            assert_eq!(env.addr, Some(frontend), "answers go back to the source");
            assert_eq!(env.load, Some(1), "one call in progress");
            assert_eq!(Message::parse(sip).unwrap().header("X-Backend"), Some("bx"));
        }
        assert_eq!(counters.invite.load(Ordering::Relaxed), 1);
    }
}
