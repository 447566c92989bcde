use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, ETag, Encoding, EntityTag, IfNoneMatch, Preference,
    Quality,
};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use bytes::Bytes;
use std::sync::{Arc, Mutex, OnceLock};

use crate::auth::Reader;
use crate::domain::ServiceName;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::routes::request::page_limit;
use crate::store::{self, Db};

/// `GET /services` rendered once per fleet change: the JSON, its gzip made on
/// first demand, and the tags that name this version.
pub struct ServicesDocument {
    version: u64,
    etag: EntityTag,
    /// The tag of the gzipped bytes, another representation.
    gzip_etag: EntityTag,
    json: Bytes,
    gzip: OnceLock<Bytes>,
}

impl ServicesDocument {
    /// The JSON compressed once for every client that accepts gzip. A fast
    /// level: the list repeats the same keys, so it still shrinks about
    /// tenfold, and a change must not stall the next reader for long.
    fn gzip(&self) -> Bytes {
        self.gzip
            .get_or_init(|| {
                use std::io::Write as _;
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.json.len() / 8),
                    flate2::Compression::new(3),
                );
                // Writing into a Vec cannot fail.
                let _ = encoder.write_all(&self.json);
                Bytes::from(encoder.finish().unwrap_or_default())
            })
            .clone()
    }
}

/// The last rendered [`ServicesDocument`], shared by every worker.
pub struct ServicesDocuments {
    last: Mutex<Option<Arc<ServicesDocument>>>,
    /// Makes ETags of this run differ from those of an earlier one, whose
    /// fleet versions started at 1 too.
    etag_prefix: String,
}

impl Default for ServicesDocuments {
    fn default() -> Self {
        ServicesDocuments {
            last: Mutex::new(None),
            etag_prefix: format!("{:08x}", rand::random::<u32>()),
        }
    }
}

impl ServicesDocuments {
    /// The fleet's services, rendered at most once per change.
    fn current(&self, fleet: &Fleet) -> Arc<ServicesDocument> {
        let version = fleet.version();
        if let Some(doc) = &*self.last.lock().expect("services document lock")
            && doc.version == version
        {
            return doc.clone();
        }
        let list = baton_proto::api::ServiceList {
            services: fleet.services(),
        };
        let doc = Arc::new(ServicesDocument {
            version,
            etag: EntityTag::new_strong(format!("{}-{version}", self.etag_prefix)),
            gzip_etag: EntityTag::new_strong(format!("{}-{version}-gzip", self.etag_prefix)),
            json: Bytes::from(serde_json::to_vec(&list).unwrap_or_default()),
            gzip: OnceLock::new(),
        });
        let mut last = self.last.lock().expect("services document lock");
        // A slower reader that rendered an older version must not replace a newer one.
        if last.as_ref().is_none_or(|l| l.version < version) {
            *last = Some(doc.clone());
        }
        doc
    }
}

/// The list is polled by dashboards and deploy scripts and is large with a
/// big fleet, so it is rendered once per change, gzipped once for the clients
/// that accept it, and answered with `304` to a client that has this version.
pub async fn list(
    _reader: Reader,
    request: HttpRequest,
    fleet: web::Data<Fleet>,
    documents: web::Data<ServicesDocuments>,
) -> HttpResponse {
    let doc = documents.current(&fleet);
    let gzip = accepts_gzip(request.get_header::<AcceptEncoding>().as_ref());
    // The two encodings are two representations, so two tags; a client
    // holding either has this version.
    let etag = if gzip { &doc.gzip_etag } else { &doc.etag };
    let if_none_match = request.get_header::<IfNoneMatch>();
    let not_modified = has_etag(if_none_match.as_ref(), &doc.etag)
        || has_etag(if_none_match.as_ref(), &doc.gzip_etag);
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(ETag(etag.clone()))
        .insert_header((header::VARY, "Accept, Accept-Encoding"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if not_modified {
        return response.finish();
    }
    response.content_type("application/json");
    if gzip {
        response
            .insert_header(ContentEncoding::Gzip)
            .body(doc.gzip())
    } else {
        response.body(doc.json.clone())
    }
}

/// `If-None-Match` holds `*` or a list of tags; weak tags match too, as a
/// `GET` allows.
fn has_etag(if_none_match: Option<&IfNoneMatch>, etag: &EntityTag) -> bool {
    match if_none_match {
        None => false,
        Some(IfNoneMatch::Any) => true,
        Some(IfNoneMatch::Items(tags)) => tags.iter().any(|tag| tag.weak_eq(etag)),
    }
}

/// True when `Accept-Encoding` lists `gzip` (or `*`) with a non-zero quality;
/// a quality given for `gzip` itself wins over the one of `*`.
fn accepts_gzip(accept_encoding: Option<&AcceptEncoding>) -> bool {
    let Some(accepted) = accept_encoding else {
        return false;
    };
    let quality_of = |wanted: &dyn Fn(&Preference<Encoding>) -> bool| {
        accepted
            .iter()
            .find(|item| wanted(&item.item))
            .map(|item| item.quality)
    };
    let gzip = |p: &Preference<Encoding>| {
        matches!(
            p,
            Preference::Specific(Encoding::Known(ContentEncoding::Gzip))
        )
    };
    let x_gzip = |p: &Preference<Encoding>| matches!(p, Preference::Specific(Encoding::Unknown(name)) if name.eq_ignore_ascii_case("x-gzip"));
    let any = |p: &Preference<Encoding>| matches!(p, Preference::Any);
    quality_of(&gzip)
        .or_else(|| quality_of(&x_gzip))
        .or_else(|| quality_of(&any))
        .is_some_and(|quality| quality > Quality::ZERO)
}

pub async fn one(
    _reader: Reader,
    path: web::Path<String>,
    fleet: web::Data<Fleet>,
) -> Result<HttpResponse, ApiError> {
    let name = ServiceName::parse(&path).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let service = fleet
        .service(name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no host runs a service named {name}")))?;
    Ok(HttpResponse::Ok().json(service))
}

#[derive(serde::Deserialize)]
pub struct PageQuery {
    limit: Option<u32>,
    before: Option<u64>,
}

/// The history outlives the service, so an unknown name is an empty page, not a 404.
pub async fn generations(
    _reader: Reader,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
    db: web::Data<Db>,
) -> Result<HttpResponse, ApiError> {
    let name = ServiceName::parse(&path).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let page =
        store::list_generations(&db, name.as_str(), query.before, page_limit(query.limit)?).await?;
    Ok(HttpResponse::Ok().json(page))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::Header;
    use actix_web::test::TestRequest;

    fn parsed<H: Header>(name: &str, text: &str) -> Option<H> {
        H::parse(
            &TestRequest::default()
                .insert_header((name, text))
                .to_http_request(),
        )
        .ok()
    }

    #[test]
    fn gzip_is_chosen_only_when_the_client_accepts_it() {
        let accepts =
            |text| accepts_gzip(parsed::<AcceptEncoding>("accept-encoding", text).as_ref());
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "br;q=1.0, GZIP;q=0.5",
            "*",
            "x-gzip",
            "deflate, *;q=0.1",
        ] {
            assert!(accepts(yes), "{yes}");
        }
        for no in [
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.0, *",
            "*;q=0",
            "gzip;q=oops",
        ] {
            assert!(!accepts(no), "{no}");
        }
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn if_none_match_matches_strong_weak_lists_and_star() {
        let tag = EntityTag::new_strong("ab12-7".into());
        let matches = |text| has_etag(parsed::<IfNoneMatch>("if-none-match", text).as_ref(), &tag);
        for yes in ["\"ab12-7\"", "W/\"ab12-7\"", "\"x\", \"ab12-7\"", "*"] {
            assert!(matches(yes), "{yes}");
        }
        for no in ["\"ab12-8\"", "ab12-7", "\"ab12-70\""] {
            assert!(!matches(no), "{no}");
        }
        assert!(!has_etag(None, &tag));
    }
}
