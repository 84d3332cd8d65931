//! Tests of `boot_listener`.

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    pairs.iter().map(|(name, value)| (http::HeaderName::from_static(name), HeaderValue::from_str(value).unwrap())).collect()
}

#[test]
fn ranges_follow_rfc_9110() {
    let etag = "\"abc\"";
    let cases: &[(&[(&'static str, &str)], RangeRequest)] = &[
        (&[], RangeRequest::Whole),
        (&[("range", "bytes=0-99")], RangeRequest::Part(0, 100)),
        (&[("range", "bytes=900-")], RangeRequest::Part(900, 1000)),
        (&[("range", "bytes=-10")], RangeRequest::Part(990, 1000)),
        (&[("range", "bytes=-5000")], RangeRequest::Part(0, 1000)),
        (&[("range", "bytes=990-5000")], RangeRequest::Part(990, 1000)),
        (&[("range", "bytes=1000-")], RangeRequest::Unsatisfiable),
        (&[("range", "bytes=-0")], RangeRequest::Unsatisfiable),
        (&[("range", "bytes=5-1")], RangeRequest::Whole),
        (&[("range", "bytes=0-1,5-6")], RangeRequest::Whole),
        (&[("range", "items=0-1")], RangeRequest::Whole),
        (&[("range", "bytes=x-y")], RangeRequest::Whole),
        (&[("range", "bytes=0-99"), ("if-range", "\"abc\"")], RangeRequest::Part(0, 100)),
        (&[("range", "bytes=0-99"), ("if-range", "\"old\"")], RangeRequest::Whole),
    ];
    for (pairs, expected) in cases {
        assert_eq!(&requested_range(&headers(pairs), 1000, etag), expected, "{pairs:?}");
    }
}

#[test]
fn validators_decide_not_modified() {
    let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let etag = "\"abc\"";
    assert!(not_modified(&headers(&[("if-none-match", "\"x\", \"abc\"")]), etag, modified));
    assert!(not_modified(&headers(&[("if-none-match", "*")]), etag, modified));
    assert!(!not_modified(&headers(&[("if-none-match", "\"x\"")]), etag, modified));
    let date = httpdate::fmt_http_date(modified);
    assert!(not_modified(&headers(&[("if-modified-since", &date)]), etag, modified));
    let earlier = httpdate::fmt_http_date(modified - Duration::from_secs(1));
    assert!(!not_modified(&headers(&[("if-modified-since", &earlier)]), etag, modified));
    assert!(!not_modified(&headers(&[("if-none-match", "\"x\""), ("if-modified-since", &date)]), etag, modified), "ETags win");
    assert!(!not_modified(&headers(&[("if-modified-since", "garbage")]), etag, modified));
}

#[test]
fn heads_are_parsed_bounded_and_refused_when_malformed() {
    let pipelined = b"GET /boot/files/vmlinuz?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nNEXT";
    let head = parse_head(pipelined).unwrap();
    assert_eq!((head.method.as_str(), head.path(), head.keep_alive()), ("GET", "/boot/files/vmlinuz", false));
    assert_eq!(head.length, pipelined.len() - "NEXT".len(), "the next request stays in the buffer");
    assert!(parse_head(b"GET / HTTP/1.0\r\n\r\n").is_ok_and(|head| !head.keep_alive()));
    assert!(parse_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").is_ok_and(|head| head.keep_alive()));
    assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap_err(), HeadError::Partial);
    assert!(matches!(parse_head(b"\x00\x01garbage\r\n\r\n"), Err(HeadError::Malformed(_))));
    assert!(matches!(parse_head(b"GET http://elsewhere/ HTTP/1.1\r\n\r\n"), Err(HeadError::Malformed(_))));
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(parse_head(huge.as_bytes()).unwrap_err(), HeadError::TooLarge);
    let many: String = (0..100).map(|n| format!("X-{n}: y\r\n")).collect();
    assert_eq!(parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()).unwrap_err(), HeadError::TooLarge);
}
