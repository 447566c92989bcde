use actix_web::http::header::{
    self, AcceptEncoding, ContentEncoding, ETag, Encoding, EntityTag, IfNoneMatch, Preference,
    Quality,
};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use baton_proto::api::{
    SERVICES_PER_PAGE_DEFAULT, SERVICES_PER_PAGE_MAX, ServiceOnHost, ServicePage,
};
use bytes::Bytes;

use crate::auth::Reader;
use crate::domain::{ServiceName, parse_service_state, validate_host_name, validate_search};
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::routes::request::page_limit;
use crate::store::{self, Db, FleetFilter};

/// What `GET /services` was asked for, each parameter checked on its own so
/// that a refusal names it.
#[derive(Debug, PartialEq, Eq)]
pub struct ListQuery {
    pub page: u32,
    pub per_page: u32,
    pub filter: FleetFilter,
}

impl ListQuery {
    /// Reads the query string: a repeated, empty or invalid parameter is an
    /// error naming it; parameters it does not know are ignored, as on
    /// every other path.
    pub fn parse(query: &str) -> Result<ListQuery, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|e| ApiError::BadRequest(format!("the query does not parse: {e}")))?
            .into_inner();
        let mut seen = std::collections::HashSet::new();
        let mut parsed = ListQuery {
            page: 1,
            per_page: SERVICES_PER_PAGE_DEFAULT,
            filter: FleetFilter::default(),
        };
        for (name, value) in &pairs {
            let known = matches!(
                name.as_str(),
                "page" | "per_page" | "service" | "host" | "state" | "search"
            );
            if known && !seen.insert(name.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "{name} is given more than once"
                )));
            }
            let bad = |rule: &str| ApiError::BadRequest(format!("{name} {rule}"));
            match name.as_str() {
                "page" => {
                    parsed.page = value
                        .parse()
                        .ok()
                        .filter(|&n| n >= 1)
                        .ok_or_else(|| bad("must be a whole number from 1 to 4294967295"))?;
                }
                "per_page" => {
                    parsed.per_page = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=SERVICES_PER_PAGE_MAX).contains(n))
                        .ok_or_else(|| {
                            bad(&format!(
                                "must be a whole number from 1 to {SERVICES_PER_PAGE_MAX}"
                            ))
                        })?;
                }
                "service" => {
                    let service = ServiceName::parse(value)
                        .map_err(|e| ApiError::BadRequest(format!("service: {e}")))?;
                    parsed.filter.service = Some(service.as_str().to_string());
                }
                "host" => {
                    validate_host_name(value)
                        .map_err(|e| ApiError::BadRequest(format!("host: {e}")))?;
                    parsed.filter.host = Some(value.clone());
                }
                "state" => {
                    parsed.filter.state = Some(parse_service_state(value).map_err(|e| bad(&e))?);
                }
                "search" => {
                    validate_search(value).map_err(|e| bad(&e))?;
                    parsed.filter.search = Some(value.clone());
                }
                _ => {}
            }
        }
        Ok(parsed)
    }

    /// The query string of page `page` with the same filters.
    pub fn url_of_page(&self, page: u32) -> String {
        let mut url = format!("/services?page={page}&per_page={}", self.per_page);
        let filter = &self.filter;
        for (name, value) in [
            ("service", filter.service.as_deref()),
            ("host", filter.host.as_deref()),
            ("state", filter.state.map(store::state_name)),
            ("search", filter.search.as_deref()),
        ] {
            // Every accepted value is made of URL-safe characters.
            if let Some(value) = value {
                url.push_str(&format!("&{name}={value}"));
            }
        }
        url
    }
}

/// One page of the fleet's services, as the database has them, with the
/// number of the next page when there is one.
pub async fn read_page(db: &Db, query: &ListQuery) -> anyhow::Result<ServicePage> {
    let offset = u64::from(query.page - 1) * u64::from(query.per_page);
    let page = store::list_fleet_services(db, &query.filter, offset, query.per_page).await?;
    let shown = offset + page.services.len() as u64;
    Ok(ServicePage {
        next_page: (shown < page.total && !page.services.is_empty())
            .then(|| query.page.checked_add(1))
            .flatten(),
        total: page.total,
        page: query.page,
        per_page: query.per_page,
        services: page
            .services
            .into_iter()
            .map(|row| ServiceOnHost::from_status(&row.host, row.online, &row.status))
            .collect(),
    })
}

/// `GET /services`: a page of the fleet's services from the database (so
/// every replica answers the whole fleet, not only the hosts linked to it),
/// host then service, filtered by service, host, state or a search. The
/// next page is in the body (`next_page`) and in a `Link` header. Each page
/// has an `ETag` of its bytes for `304`s, and is gzipped for a client that
/// accepts it.
pub async fn list(
    _reader: Reader,
    request: HttpRequest,
    db: web::Data<Db>,
) -> Result<HttpResponse, ApiError> {
    let query = ListQuery::parse(request.query_string())?;
    let page = read_page(&db, &query).await?;
    let json = serde_json::to_vec(&page).map_err(|e| ApiError::Unexpected(e.into()))?;
    let tag = entity_tag(&json);
    let etag = EntityTag::new_strong(tag.clone());
    let gzip_etag = EntityTag::new_strong(format!("{tag}-gzip"));
    let gzip = accepts_gzip(request.get_header::<AcceptEncoding>().as_ref());
    // The two encodings are two representations, so two tags; a client
    // holding either has this version.
    let if_none_match = request.get_header::<IfNoneMatch>();
    let not_modified =
        has_etag(if_none_match.as_ref(), &etag) || has_etag(if_none_match.as_ref(), &gzip_etag);
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header(ETag(if gzip { gzip_etag } else { etag }))
        .insert_header((header::VARY, "Accept, Accept-Encoding"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if let Some(next) = page.next_page {
        response.insert_header((
            header::LINK,
            format!("<{}>; rel=\"next\"", query.url_of_page(next)),
        ));
    }
    if not_modified {
        return Ok(response.finish());
    }
    response.content_type("application/json");
    Ok(if gzip {
        response
            .insert_header(ContentEncoding::Gzip)
            .body(gzipped(&json))
    } else {
        response.body(json)
    })
}

/// A fast level: a page repeats the same keys, so it still shrinks about
/// tenfold.
fn gzipped(json: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(json.len() / 8),
        flate2::Compression::new(3),
    );
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(json);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// A strong validator of the page's JSON: the same bytes have the same tag
/// on every replica and across restarts (SipHash with fixed keys).
fn entity_tag(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
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
