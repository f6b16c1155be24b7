//! Who may call the server, checked before any handler runs: the `Host` a request names (so a
//! web page whose own name resolves to this server, DNS rebinding, is refused), the browser
//! origin allowed by CORS (none by default), the API key, and the content type of JSON bodies
//! (a page on another site can send a cross-origin `text/plain` POST without asking first, but
//! not an `application/json` one). Each response is counted by route and status.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;
use crate::settings::Network;
use crate::state::AppState;

/// Whether two byte strings are equal, in time that depends only on their lengths (an API key
/// compared with `==` leaks, through timing, how much of a guess is right).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The host name of a `Host` header value (`name:port`, `[v6]:port`), lowercased.
fn host_name(value: &str) -> String {
    let value = value.trim();
    let name = if let Some(rest) = value.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        value.rsplit_once(':').map_or(value, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                value
            }
        })
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request may address the server as `host` (a `Host` header value): an IP address,
/// `localhost` (or a name under it), or a name in `--allowed-hosts` (`*` allows any); or no
/// host at all.
pub fn host_allowed(network: &Network, host: &str) -> bool {
    let name = host_name(host);
    // No host at all is not a browser (every browser request names one).
    if name.is_empty()
        || name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
    {
        return true;
    }
    network
        .allowed_hosts
        .iter()
        .any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(&name))
}

/// Whether a browser request from `origin` may be answered: no `Origin` header (not a
/// browser, or a same-origin GET), the server's own origin, or the `--cors-origin`.
pub fn origin_allowed(network: &Network, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if network.cors_origin.as_deref() == Some(origin) {
        return true;
    }
    // Same origin: the page the server itself serves (scheme://host of this request).
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let same = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((same, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Refuses requests that name a host this server does not answer to (400), and browser
/// requests from origins it does not allow (403); answers CORS preflights for the allowed
/// origin and adds the CORS headers to its responses.
pub async fn check_caller(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let network = &state.network;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_string();
    if !host_allowed(network, &host) {
        return ApiError::bad(
            None,
            format!(
                "this server does not answer to the host {:?}: address it by IP or localhost, or start it with --allowed-hosts {}",
                host_name(&host),
                host_name(&host)
            ),
        )
        .with_code("host_not_allowed")
        .into_response();
    }
    if !origin_allowed(network, request.headers()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "requests from this web page's origin are not allowed (start the server with --cors-origin ORIGIN to allow one)",
        )
        .with_code("origin_not_allowed")
        .into_response();
    }
    let cors = network.cors_origin.as_deref().filter(|allowed| {
        request
            .headers()
            .get(header::ORIGIN)
            .is_some_and(|o| o.as_bytes() == allowed.as_bytes())
    });
    let Some(cors) = cors.and_then(|c| HeaderValue::from_str(c).ok()) else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, cors);
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    response
}

/// The key a request carries: `Authorization: Bearer KEY` (the scheme in any case), or for a
/// WebSocket, which a browser cannot give headers, the subprotocol `openai-insecure-api-key.KEY`.
pub fn given_key(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| key.trim().to_string())
        });
    bearer.or_else(|| {
        headers
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())?
            .split(',')
            .find_map(|p| p.trim().strip_prefix("openai-insecure-api-key."))
            .map(str::to_string)
    })
}

/// Requires the API key, when the server has one (401 otherwise).
pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(key) = &state.api_key {
        let given = given_key(request.headers());
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or incorrect API key: send `Authorization: Bearer <key>`",
            )
            .with_code("invalid_api_key")
            .into_response();
        }
    }
    next.run(request).await
}

/// Requires `Content-Type: application/json` (415 otherwise).
pub async fn json_only(request: Request, next: Next) -> Response {
    let json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON, sent with `Content-Type: application/json`",
        )
        .with_code("unsupported_media_type")
        .into_response();
    }
    next.run(request).await
}

/// Counts each response by its route and status ([`crate::metrics::Counters::responded`]).
pub async fn count_responses(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    state
        .queue
        .counters
        .responded(&route, response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_ip_and_localhost_are_allowed_names_only_when_listed() {
        let mut network = Network::default();
        for ok in [
            "127.0.0.1:8000",
            "localhost:8000",
            "LOCALHOST",
            "[::1]:8000",
            "10.1.2.3",
            "app.localhost:1",
        ] {
            assert!(host_allowed(&network, ok), "{ok}");
        }
        for refused in ["evil.example:8000", "localhost.evil.example"] {
            assert!(!host_allowed(&network, refused), "{refused}");
        }
        network.allowed_hosts = vec!["pal.internal".into()];
        assert!(host_allowed(&network, "PAL.internal:8000"));
        assert!(!host_allowed(&network, "evil.example"));
        network.allowed_hosts = vec!["*".into()];
        assert!(host_allowed(&network, "evil.example"));
    }

    #[test]
    fn keys_come_from_bearer_in_any_case_or_the_websocket_subprotocol() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer  k1 ".parse().unwrap());
        assert_eq!(given_key(&headers).as_deref(), Some("k1"));
        headers.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(given_key(&headers), None);
        let mut ws = HeaderMap::new();
        ws.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "realtime, openai-insecure-api-key.k2".parse().unwrap(),
        );
        assert_eq!(given_key(&ws).as_deref(), Some("k2"));
    }

    #[test]
    fn origins_are_the_page_itself_or_the_one_allowed() {
        let mut network = Network::default();
        let mut headers = HeaderMap::new();
        assert!(origin_allowed(&network, &headers));
        headers.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        headers.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(origin_allowed(&network, &headers));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!origin_allowed(&network, &headers));
        network.cors_origin = Some("https://evil.example".into());
        assert!(origin_allowed(&network, &headers));
    }
}
