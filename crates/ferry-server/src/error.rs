//! One mapping from errors to HTTP responses, for every API.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_api::{ApiError, ErrorKind};
use ferry_core::CoreError;
use ferry_store::StoreError;

/// An error as an API caller sees it. Internal details (database errors) are logged
/// and replaced by a generic message.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub kind: ErrorKind,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Self {
        HttpError { status, kind, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorKind::Invalid, message)
    }
}

impl From<CoreError> for HttpError {
    fn from(e: CoreError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(e) => e.into(),
            StoreError::BadRequest(m) => Self::bad_request(m),
            StoreError::NotFound { .. } => Self::new(StatusCode::NOT_FOUND, ErrorKind::NotFound, e.to_string()),
            StoreError::Conflict(m) => Self::new(StatusCode::CONFLICT, ErrorKind::Conflict, m),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Internal, "internal error; see the server log")
            }
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for HttpError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        let status = if r.status() == StatusCode::PAYLOAD_TOO_LARGE { r.status() } else { StatusCode::BAD_REQUEST };
        Self::new(status, ErrorKind::Invalid, r.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for HttpError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(ApiError { error: self.message, kind: self.kind })).into_response()
    }
}

/// `Json` whose rejections are [`HttpError`]s, so malformed bodies get the same JSON
/// error shape as every other failure.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(HttpError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}
