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
}

impl ParseError {
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
    }
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ParseError {}
