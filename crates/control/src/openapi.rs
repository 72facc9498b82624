//! The OpenAPI 3.1 description of `/api/v1`, served at `/api/v1/openapi.json`.

pub const DOCUMENT: &str = include_str!("openapi.json");

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_json_and_names_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        for path in
            ["/games", "/games/{id}", "/sessions", "/sessions/{id}", "/sessions/{id}/tickets", "/health"]
        {
            assert!(paths.contains_key(path), "{path} is documented");
        }
    }
}
