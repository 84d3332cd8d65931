//! Tests of `commands`.

#[test]
fn lifetimes() {
    assert_eq!(super::parse_lifetime("90").unwrap(), 90);
    assert_eq!(super::parse_lifetime("12h").unwrap(), 43_200);
    assert_eq!(super::parse_lifetime("30d").unwrap(), 2_592_000);
    assert!(super::parse_lifetime("3w").is_err());
    assert!(super::parse_lifetime("h").is_err());
}
