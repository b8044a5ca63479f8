//! Parse errors: one fieldless variant per way a peer can get a message wrong.

/// Why a message (or one of its headers) could not be parsed.
///
/// Fieldless and `Copy` so the hot path never allocates on bad input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseError {
    Empty,
    TooLarge,
    BadStartLine,
    BadMethod,
    BadRequestUri,
    BadVersion,
    BadStatusCode,
    BadHeaderName,
    BadHeaderLine,
    TooManyHeaders,
    MissingEndOfHeaders,
    BadContentLength,
    TruncatedBody,
    MissingVia,
    MissingFrom,
    MissingTo,
    MissingCallId,
    MissingCSeq,
    BadVia,
    BadFrom,
    BadTo,
    BadCSeq,
    CSeqMethodMismatch,
    BadMaxForwards,
    BadContact,
    BadExpires,
    BadUri,
    BadNameAddr,
    /// `SIP/x.y` other than 2.0 in a request line (answered 505).
    UnsupportedVersion,
    /// A Request-URI scheme other than sip, sips or tel (answered 416).
    UnsupportedUriScheme,
    /// More than one SP between the elements of a request line, or
    /// whitespace after the version (RFC 3261 §7.1: exactly one SP).
    StartLineWhitespace,
    DuplicateFrom,
    DuplicateTo,
    DuplicateCallId,
    DuplicateCSeq,
    DuplicateMaxForwards,
}

impl ParseError {
    /// Every variant, in declaration order (for per-reason counters and tests).
    pub const ALL: &'static [ParseError] = &[
        ParseError::Empty,
        ParseError::TooLarge,
        ParseError::BadStartLine,
        ParseError::BadMethod,
        ParseError::BadRequestUri,
        ParseError::BadVersion,
        ParseError::BadStatusCode,
        ParseError::BadHeaderName,
        ParseError::BadHeaderLine,
        ParseError::TooManyHeaders,
        ParseError::MissingEndOfHeaders,
        ParseError::BadContentLength,
        ParseError::TruncatedBody,
        ParseError::MissingVia,
        ParseError::MissingFrom,
        ParseError::MissingTo,
        ParseError::MissingCallId,
        ParseError::MissingCSeq,
        ParseError::BadVia,
        ParseError::BadFrom,
        ParseError::BadTo,
        ParseError::BadCSeq,
        ParseError::CSeqMethodMismatch,
        ParseError::BadMaxForwards,
        ParseError::BadContact,
        ParseError::BadExpires,
        ParseError::BadUri,
        ParseError::BadNameAddr,
        ParseError::UnsupportedVersion,
        ParseError::UnsupportedUriScheme,
        ParseError::StartLineWhitespace,
        ParseError::DuplicateFrom,
        ParseError::DuplicateTo,
        ParseError::DuplicateCallId,
        ParseError::DuplicateCSeq,
        ParseError::DuplicateMaxForwards,
    ];

    /// The status a proxy answers a request with this fault (RFC 3261
    /// §8.2, §16.3; RFC 4475): 505 for the version, 416 for the scheme,
    /// 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::UnsupportedVersion => 505,
            ParseError::UnsupportedUriScheme => 416,
            _ => 400,
        }
    }

    /// A short stable name, used in counters and log lines.
    pub fn as_str(&self) -> &'static str {
        error_name(*self)
    }
}

fn error_name(e: ParseError) -> &'static str {
    match e {
        ParseError::Empty => "empty",
        ParseError::TooLarge => "too_large",
        ParseError::BadStartLine => "bad_start_line",
        ParseError::BadMethod => "bad_method",
        ParseError::BadRequestUri => "bad_request_uri",
        ParseError::BadVersion => "bad_version",
        ParseError::BadStatusCode => "bad_status_code",
        ParseError::BadHeaderName => "bad_header_name",
        ParseError::BadHeaderLine => "bad_header_line",
        ParseError::TooManyHeaders => "too_many_headers",
        ParseError::MissingEndOfHeaders => "missing_end_of_headers",
        ParseError::BadContentLength => "bad_content_length",
        ParseError::TruncatedBody => "truncated_body",
        ParseError::MissingVia => "missing_via",
        ParseError::MissingFrom => "missing_from",
        ParseError::MissingTo => "missing_to",
        ParseError::MissingCallId => "missing_call_id",
        ParseError::MissingCSeq => "missing_cseq",
        ParseError::BadVia => "bad_via",
        ParseError::BadFrom => "bad_from",
        ParseError::BadTo => "bad_to",
        ParseError::BadCSeq => "bad_cseq",
        ParseError::CSeqMethodMismatch => "cseq_method_mismatch",
        ParseError::BadMaxForwards => "bad_max_forwards",
        ParseError::BadContact => "bad_contact",
        ParseError::BadExpires => "bad_expires",
        ParseError::BadUri => "bad_uri",
        ParseError::BadNameAddr => "bad_name_addr",
        ParseError::UnsupportedVersion => "unsupported_version",
        ParseError::UnsupportedUriScheme => "unsupported_uri_scheme",
        ParseError::StartLineWhitespace => "start_line_whitespace",
        ParseError::DuplicateFrom => "duplicate_from",
        ParseError::DuplicateTo => "duplicate_to",
        ParseError::DuplicateCallId => "duplicate_call_id",
        ParseError::DuplicateCSeq => "duplicate_cseq",
        ParseError::DuplicateMaxForwards => "duplicate_max_forwards",
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ParseError {}
