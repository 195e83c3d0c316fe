//! The mail client notify sends with: lettre's pooled transport as patched
//! in vendor/lettre (ADR 0012), against Postfix's smtp-sink, which offers
//! PIPELINING (RFC 2920) and keeps every mail it accepts. The saga tests
//! cover notify itself against aiosmtpd, which does not offer it, so they
//! take the one-command-at-a-time path.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lettre::address::Envelope;
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::{ClientId, Extension};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use orderflow_testkit as kit;

fn transport(sink: &kit::SmtpSink, connections: u32) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(&sink.url())
        .unwrap()
        .timeout(Some(Duration::from_secs(10)))
        .pool_config(PoolConfig::new().max_size(connections))
        .build()
}

fn mail(to: &[&str], subject: &str) -> Message {
    let mut builder = Message::builder()
        .from("shop@example.com".parse().unwrap())
        .subject(subject);
    for address in to {
        builder = builder.to(address.parse().unwrap());
    }
    // A line starting with a dot: the body goes through dot-stuffing.
    builder
        .body(format!("{subject}\n.a line with a leading dot\n"))
        .unwrap()
}

/// One connection of lettre's, not pooled: after its EHLO.
async fn connect(port: u16) -> AsyncSmtpConnection {
    AsyncSmtpConnection::connect_tokio1(
        ("127.0.0.1", port),
        Some(Duration::from_secs(10)),
        &ClientId::default(),
        None,
        None,
    )
    .await
    .unwrap()
}

/// The mails the sink holds, once it holds `count` of them.
fn wait_for_mails(sink: &kit::SmtpSink, count: usize) -> Vec<kit::Mail> {
    let started = Instant::now();
    loop {
        let mails = sink.mails();
        if mails.len() >= count || started.elapsed() > Duration::from_secs(15) {
            return mails;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn pooled_mail_to_postfix_pipelines_the_envelope_and_every_mail_arrives_once() {
    let sink = kit::spawn_postfix_smtp();
    // Postfix offers PIPELINING and the client sees it, so every mail below
    // goes with its envelope (MAIL, RCPT…, DATA) in one write.
    let connection = connect(sink.server.port).await;
    assert!(
        connection
            .server_info()
            .supports_feature(Extension::Pipelining),
        "{}",
        connection.server_info()
    );

    // 40 mails, 8 at a time over a pool of 4: connections are reused.
    let smtp = transport(&sink, 4);
    let mut expected: Vec<(String, String)> = (0..39)
        .map(|i| (format!("c{i}@example.com"), format!("order o-{i}")))
        .collect();
    expected.push((
        "staff@example.com, ops@example.com".into(),
        "two recipients".into(),
    ));
    let sends = expected.iter().map(|(to, subject)| {
        let to: Vec<&str> = to.split(", ").collect();
        smtp.send(mail(&to, subject))
    });
    let results: Vec<_> = futures::stream::iter(sends)
        .buffer_unordered(8)
        .collect()
        .await;
    for result in results {
        result.expect("every mail is accepted");
    }

    let mut got: Vec<(String, String)> = wait_for_mails(&sink, expected.len())
        .into_iter()
        .map(|m| (m.to, m.subject))
        .collect();
    got.sort();
    expected.sort();
    assert_eq!(got, expected, "each mail once, to its recipients");
}

#[tokio::test]
async fn a_restarted_server_costs_no_failed_send() {
    let mut sink = kit::spawn_postfix_smtp();
    let smtp = transport(&sink, 2);
    let (a, b) = tokio::join!(
        smtp.send(mail(&["a@example.com"], "before 1")),
        smtp.send(mail(&["b@example.com"], "before 2"))
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(wait_for_mails(&sink, 2).len(), 2);

    // Both pooled connections are closed by the server's death. The client
    // learns of it from its sockets (a running service's reactor sees the
    // close long before the next mail), so the next mails take new
    // connections instead of failing on the old ones.
    sink.stop();
    sink.restart();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (a, b) = tokio::join!(
        smtp.send(mail(&["a@example.com"], "after 1")),
        smtp.send(mail(&["b@example.com"], "after 2"))
    );
    a.expect("the first mail after the restart goes on a new connection");
    b.expect("the second mail after the restart goes on a new connection");
    let mut subjects: Vec<String> = wait_for_mails(&sink, 4)
        .into_iter()
        .map(|m| m.subject)
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["after 1", "after 2", "before 1", "before 2"]);
}

/// What a scripted server received: each envelope as it stood before any
/// of its replies was sent, and what came after the refusal.
#[derive(Debug, Default)]
struct Wire {
    envelopes: Vec<Vec<String>>,
    after_refusal: Vec<String>,
}

/// A scripted server offering PIPELINING: it reads a whole envelope
/// (MAIL, RCPT, DATA) before it answers any of it, so a client that waited
/// for each reply stalls and the read times out. The first mail is
/// accepted; the second's recipient is refused.
fn scripted_server(listener: TcpListener) -> Wire {
    let (stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut read_line = |line: &mut String| {
        line.clear();
        reader.read_line(line).map(|n| n > 0).unwrap_or(false)
    };
    let mut wire = Wire::default();
    writer.write_all(b"220 scripted ESMTP\r\n").unwrap();
    assert!(read_line(&mut line), "no EHLO");
    writer
        .write_all(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
        .unwrap();
    for (replies, accepted) in [
        (
            &b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"[..],
            true,
        ),
        (
            &b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n554 5.5.1 no valid recipients\r\n"[..],
            false,
        ),
    ] {
        let mut envelope = Vec::new();
        while envelope.len() < 3 && read_line(&mut line) {
            envelope.push(line.trim_end().to_owned());
        }
        wire.envelopes.push(envelope.clone());
        if envelope.len() < 3 {
            return wire;
        }
        writer.write_all(replies).unwrap();
        if accepted {
            // The body, up to its terminator.
            while read_line(&mut line) && line != ".\r\n" {}
            writer.write_all(b"250 2.0.0 queued\r\n").unwrap();
        }
    }
    while read_line(&mut line) {
        wire.after_refusal.push(line.trim_end().to_owned());
        if line == "QUIT\r\n" {
            writer.write_all(b"221 2.0.0 bye\r\n").unwrap();
        }
    }
    wire
}

#[tokio::test]
async fn the_envelope_goes_in_one_write_and_a_refused_recipient_ends_the_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || scripted_server(listener));

    let mut connection = connect(port).await;
    let envelope = |to: &str| {
        Envelope::new(
            Some("shop@example.com".parse().unwrap()),
            vec![to.parse().unwrap()],
        )
        .unwrap()
    };
    let accepted = connection
        .send(
            &envelope("a@example.com"),
            &mail(&["a@example.com"], "one").formatted(),
        )
        .await;
    let refused = connection
        .send(
            &envelope("nobody@example.com"),
            &mail(&["nobody@example.com"], "two").formatted(),
        )
        .await;
    let wire = tokio::task::spawn_blocking(move || server.join().unwrap())
        .await
        .unwrap();

    assert_eq!(
        wire.envelopes,
        [
            [
                "MAIL FROM:<shop@example.com>",
                "RCPT TO:<a@example.com>",
                "DATA"
            ],
            [
                "MAIL FROM:<shop@example.com>",
                "RCPT TO:<nobody@example.com>",
                "DATA"
            ],
        ],
        "each envelope arrives whole before any reply"
    );
    accepted.expect("the first mail is accepted");
    let error = refused.expect_err("the refused recipient fails the mail");
    assert!(error.is_permanent(), "{error}");
    assert!(error.to_string().contains("no such user"), "{error}");
    // The first refusal ends it: the connection is given up (QUIT, then
    // closed), never reused with a reply still unread.
    assert!(connection.has_broken());
    assert_eq!(wire.after_refusal, ["QUIT"]);
}
