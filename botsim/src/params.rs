//! Decoding request parameters the way the Bot API accepts them.
//!
//! Telegram takes parameters from the query string and from the body as
//! `application/x-www-form-urlencoded`, `application/json` or `multipart/form-data` (teloxide sends
//! `setWebhook` as multipart). Everything becomes a string, as in Telegram's own server: JSON
//! strings are unquoted, other JSON values keep their JSON text (so `allowed_updates` stays a JSON
//! array), `null` counts as absent. Uploaded files are recorded by name only.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::{HeaderMap, Uri, header::CONTENT_TYPE};

use crate::record::Params;

/// Merges the query string and the body into one parameter set (body values win).
pub(crate) async fn decode(uri: &Uri, headers: &HeaderMap, body: Bytes) -> Result<Params, String> {
    let mut params = Params::default();
    if let Some(query) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.into_owned(), v.into_owned());
        }
    }
    if body.is_empty() {
        return Ok(params);
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => decode_json(&body, &mut params)?,
        "multipart/form-data" => decode_multipart(&content_type, body, &mut params).await?,
        // Telegram treats a body without a recognised type as a form, like most clients send it.
        _ => {
            for (k, v) in url::form_urlencoded::parse(&body) {
                params.insert(k.into_owned(), v.into_owned());
            }
        }
    }
    Ok(params)
}

fn decode_json(body: &[u8], params: &mut Params) -> Result<(), String> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| "Bad Request: can't parse JSON object".to_owned())?;
    let serde_json::Value::Object(map) = value else {
        return Err("Bad Request: JSON body must be an object".to_owned());
    };
    for (k, v) in map {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::String(s) => params.insert(k, s),
            other => params.insert(k, other.to_string()),
        }
    }
    Ok(())
}

async fn decode_multipart(
    content_type: &str,
    body: Bytes,
    params: &mut Params,
) -> Result<(), String> {
    let request = Request::builder()
        .header(CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .map_err(|e| format!("Bad Request: {e}"))?;
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|e| format!("Bad Request: {}", e.body_text()))?;
    let bad =
        |e: axum::extract::multipart::MultipartError| format!("Bad Request: {}", e.body_text());
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        if let Some(file_name) = field.file_name().map(str::to_owned) {
            field.bytes().await.map_err(bad)?;
            params.insert(name, format!("<file {file_name}>"));
        } else {
            params.insert(name, field.text().await.map_err(bad)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("a header value"),
        );
        h
    }

    #[tokio::test]
    async fn json_bodies_are_flattened_to_strings_and_override_the_query() {
        let uri: Uri = "/botX/getUpdates?offset=1&limit=5".parse().expect("a uri");
        let body =
            Bytes::from_static(br#"{"offset":9,"allowed_updates":["message"],"timeout":null}"#);
        let p = decode(&uri, &headers("application/json; charset=utf-8"), body)
            .await
            .expect("decoded");
        assert_eq!(p.get("offset"), Some("9"));
        assert_eq!(p.get("limit"), Some("5"));
        assert_eq!(p.get("allowed_updates"), Some(r#"["message"]"#));
        assert_eq!(p.get("timeout"), None);
    }

    #[tokio::test]
    async fn form_bodies_are_decoded() {
        let uri: Uri = "/botX/getUpdates".parse().expect("a uri");
        let body = Bytes::from_static(b"offset=-3&allowed_updates=%5B%22poll%22%5D");
        let p = decode(&uri, &headers("application/x-www-form-urlencoded"), body)
            .await
            .expect("decoded");
        assert_eq!(p.get("offset"), Some("-3"));
        assert_eq!(p.get("allowed_updates"), Some(r#"["poll"]"#));
    }

    #[tokio::test]
    async fn multipart_bodies_are_decoded() {
        let uri: Uri = "/botX/setWebhook".parse().expect("a uri");
        let body = "--XX\r\nContent-Disposition: form-data; name=\"url\"\r\n\r\nhttp://127.0.0.1:1/hook\r\n\
                    --XX\r\nContent-Disposition: form-data; name=\"certificate\"; filename=\"c.pem\"\r\n\r\nPEM\r\n--XX--\r\n";
        let p = decode(
            &uri,
            &headers("multipart/form-data; boundary=XX"),
            Bytes::from(body),
        )
        .await
        .expect("decoded");
        assert_eq!(p.get("url"), Some("http://127.0.0.1:1/hook"));
        assert_eq!(p.get("certificate"), Some("<file c.pem>"));
    }

    #[tokio::test]
    async fn a_json_body_that_is_not_an_object_is_refused() {
        let uri: Uri = "/botX/getMe".parse().expect("a uri");
        let result = decode(
            &uri,
            &headers("application/json"),
            Bytes::from_static(b"[1]"),
        )
        .await;
        assert!(result.is_err());
    }
}
