//! One HTTP client for every part under test: [`TestClient`] knows the part's base URL, its
//! builders take a path, an optional bearer token and a JSON body, and awaiting one gives a
//! [`TestResponse`] with the status, the headers and the body already read.

use std::{
    fmt,
    future::{Future, IntoFuture},
    pin::Pin,
};

use reqwest::{
    Method, StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde_json::Value;

use super::sse::SseStream;

/// A part's base URL (`http://127.0.0.1:port`) and the client that talks to it.
#[derive(Debug, Clone)]
pub struct TestClient {
    pub base_url: String,
    pub http: reqwest::Client,
}

impl TestClient {
    pub fn new(base_url: impl Into<String>) -> Self {
        Self::with_http(base_url, reqwest::Client::new())
    }

    /// A client configured by the test (timeouts, pooling) against `base_url`.
    pub fn with_http(base_url: impl Into<String>, http: reqwest::Client) -> Self {
        Self {
            base_url: base_url.into(),
            http,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn request(&self, method: Method, path: &str) -> TestRequest {
        let url = self.url(path);
        TestRequest {
            what: format!("{method} {url}"),
            builder: self.http.request(method, url),
        }
    }

    pub fn get(&self, path: &str) -> TestRequest {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> TestRequest {
        self.request(Method::POST, path)
    }

    pub fn put(&self, path: &str) -> TestRequest {
        self.request(Method::PUT, path)
    }

    pub fn patch(&self, path: &str) -> TestRequest {
        self.request(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> TestRequest {
        self.request(Method::DELETE, path)
    }
}

/// A request being built; awaiting it sends it (panicking if the part does not answer).
#[must_use = "a request does nothing until it is awaited"]
pub struct TestRequest {
    /// Method and URL, for the panic message of a request that got no answer.
    what: String,
    builder: reqwest::RequestBuilder,
}

impl TestRequest {
    /// `Authorization: Bearer {token}`.
    pub fn bearer(self, token: impl fmt::Display) -> Self {
        self.map(|builder| builder.bearer_auth(token))
    }

    /// [`bearer`](Self::bearer) when there is a token, the request unchanged without.
    pub fn maybe_bearer(self, token: Option<impl fmt::Display>) -> Self {
        match token {
            Some(token) => self.bearer(token),
            None => self,
        }
    }

    pub fn json(self, body: &(impl serde::Serialize + ?Sized)) -> Self {
        self.map(|builder| builder.json(body))
    }

    pub fn header<K, V>(self, name: K, value: V) -> Self
    where
        HeaderName: TryFrom<K>,
        <HeaderName as TryFrom<K>>::Error: Into<http::Error>,
        HeaderValue: TryFrom<V>,
        <HeaderValue as TryFrom<V>>::Error: Into<http::Error>,
    {
        self.map(|builder| builder.header(name, value))
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        self.map(|builder| builder.body(body))
    }

    /// Anything else reqwest's builder offers (a timeout, a query, ...).
    pub fn map(
        self,
        change: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Self {
        Self {
            what: self.what,
            builder: change(self.builder),
        }
    }

    /// Sends the request and reads the whole answer; panics if there is none.
    pub async fn send(self) -> TestResponse {
        let what = self.what.clone();
        self.try_send()
            .await
            .unwrap_or_else(|error| panic!("{what}: no answer: {error}"))
    }

    /// Sends the request and reads the whole answer, or the transport error.
    pub async fn try_send(self) -> Result<TestResponse, reqwest::Error> {
        Ok(TestResponse::read(self.builder.send().await?).await)
    }

    /// Sends the request and returns the response unread (a streaming body); panics if there
    /// is no answer.
    pub async fn send_raw(self) -> reqwest::Response {
        let what = self.what;
        self.builder
            .send()
            .await
            .unwrap_or_else(|error| panic!("{what}: no answer: {error}"))
    }

    /// Opens an SSE stream: the events of a successful response, or the response that refused.
    pub async fn sse(self) -> Result<SseStream, TestResponse> {
        let response = self.send_raw().await;
        if response.status().is_success() {
            Ok(SseStream::new(response))
        } else {
            Err(TestResponse::read(response).await)
        }
    }
}

impl IntoFuture for TestRequest {
    type Output = TestResponse;
    type IntoFuture = Pin<Box<dyn Future<Output = TestResponse> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// A whole answer: status, headers, the body as text and, when it is JSON, parsed (`Null` when
/// it is not).
#[derive(Debug, Clone)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub body: Value,
}

impl TestResponse {
    /// Reads all of `response` (a body that breaks off reads as what arrived: nothing).
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap_or_default();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
            body,
        }
    }

    /// The JSON body, the whole envelope.
    pub fn json(&self) -> &Value {
        &self.body
    }

    /// The `data` of the `{statusCode, data}` envelope (`Null` without one).
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }

    /// The `message` of the error envelope (empty without one).
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }

    /// A header's value, when present and text.
    pub fn header(&self, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Status and JSON body, for a test that takes them apart.
    pub fn parts(self) -> (StatusCode, Value) {
        (self.status, self.body)
    }
}
