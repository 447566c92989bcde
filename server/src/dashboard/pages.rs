//! One handler per page. Reads need a signed-in session; the restart form
//! needs an operator session and the session's form token.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_proto::RestartOutcome;
use baton_proto::api::{RestartState, ServiceOnHost};

use percent_encoding::utf8_percent_encode;

use crate::auth::{TokenCache, hash_token};
use crate::dashboard::origin::require_same_origin;
use crate::dashboard::response::{PageError, QUERY_VALUE, page, page_with_status, see_other};
use crate::dashboard::session::{Session, Sessions};
use crate::dashboard::signed_in::SignedIn;
use crate::dashboard::timeline;
use crate::dashboard::views::{
    Choice, ConfirmPage, FleetLine, FleetSearch, GenerationLine, HostLine, Layout, LoginPage,
    OverviewLiveFragment, Pager, RestartDetail, RestartLine, RestartPage, RestartsPage,
    ServiceLive, ServicePage, Summary,
};
use crate::domain::{
    Role, ServiceName, now_millis, parse_service_state, validate_host_name, validate_search,
};
use crate::fleet::Fleet;
use crate::restarts::{MAX_REASON_CHARS, RestartOrder, Restarts, StartError};
use crate::settings::Settings;
use crate::store::{self, Db, FleetFilter, RestartFilter};

const RECENT_RESTARTS: u32 = 12;
const HISTORY_PAGE: u32 = 50;
/// Services on hosts the overview lists per page.
const OVERVIEW_PAGE: u32 = 50;
/// Enough generations for the timeline's last restarts on a few hosts.
const TIMELINE_GENERATIONS: u32 = 60;
/// Generations listed with what they ran under the timeline, newest first.
const GENERATION_LINES: usize = 20;

#[derive(serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// Only a path on this server: an open redirect would let a link to our
/// login page forward a freshly signed-in person anywhere.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next) if is_local_path(next) => next.to_string(),
        _ => "/".to_string(),
    }
}

/// One leading `/` and then only visible ASCII. Browsers drop tabs and line
/// breaks from a URL and read `\` as `/`, so `/\t/evil.example` and
/// `/\evil.example` would name another host; a line break would not even
/// fit in a `Location` header. Paths that came through our own `next=` are
/// percent-encoded, so nothing legitimate is lost.
fn is_local_path(next: &str) -> bool {
    next.starts_with('/')
        && !next.starts_with("//")
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
}

pub async fn login_form(
    query: web::Query<NextQuery>,
    sessions: web::Data<Sessions>,
    request: HttpRequest,
) -> Result<HttpResponse, PageError> {
    let next = safe_next(query.next.as_deref());
    if sessions.find(&request).await?.is_some() {
        return Ok(see_other(&next));
    }
    page(&LoginPage {
        layout: Layout::anonymous("login"),
        next,
        error: None,
    })
}

#[derive(serde::Deserialize)]
pub struct LoginForm {
    token: String,
    next: Option<String>,
}

pub async fn login(
    request: HttpRequest,
    form: web::Form<LoginForm>,
    sessions: web::Data<Sessions>,
    tokens: web::Data<TokenCache>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, PageError> {
    require_same_origin(&request)?;
    let next = safe_next(form.next.as_deref());
    let token = form.token.trim();
    let refused = |error: &str| {
        page_with_status(
            StatusCode::UNAUTHORIZED,
            &LoginPage {
                layout: Layout::anonymous("login"),
                next: next.clone(),
                error: Some(error.to_string()),
            },
        )
    };
    if token.is_empty() {
        return refused("Paste a viewer or operator token.");
    }
    // Asked of the database, not the cache: a session opened now is refused
    // at once if its token was revoked, so its sign-in must be too.
    match tokens.check_now(&hash_token(token)).await? {
        Some(principal) if principal.role != Role::Agent => {
            tracing::info!(token = %principal.name, role = principal.role.as_str(), "dashboard sign-in");
            let cookie = sessions.open(&principal, settings.tls.is_some()).await?;
            let mut response = see_other(&next);
            response
                .add_cookie(&cookie)
                .map_err(|e| anyhow::anyhow!("cannot set the session cookie: {e}"))?;
            Ok(response)
        }
        Some(_) => refused("That is an agent token; sign in with a viewer or operator token."),
        None => refused("This token is not known to this server."),
    }
}

pub async fn logout(
    request: HttpRequest,
    sessions: web::Data<Sessions>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, PageError> {
    require_same_origin(&request)?;
    let cookie = sessions.close(&request, settings.tls.is_some()).await?;
    let mut response = see_other("/login");
    response
        .add_cookie(&cookie)
        .map_err(|e| anyhow::anyhow!("cannot clear the session cookie: {e}"))?;
    Ok(response)
}

/// The overview's list: its page and filters, from the address. Empty
/// fields of the search form mean no filter.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct OverviewQuery {
    page: Option<String>,
    search: Option<String>,
    state: Option<String>,
}

/// [`OverviewQuery`] read: the filter, the page, and what was wrong with it.
pub struct OverviewRequest {
    filter: FleetFilter,
    page: u32,
    search: String,
    state: String,
    error: Option<String>,
}

impl OverviewQuery {
    pub fn read(&self) -> OverviewRequest {
        let search = self
            .search
            .as_deref()
            .unwrap_or_default()
            .trim()
            .to_string();
        let state = self.state.as_deref().unwrap_or_default().trim().to_string();
        let mut request = OverviewRequest {
            filter: FleetFilter::default(),
            page: 1,
            search,
            state,
            error: None,
        };
        if let Some(page) = self.page.as_deref().filter(|p| !p.is_empty()) {
            match page.parse::<u32>() {
                Ok(n) if n >= 1 => request.page = n,
                _ => request.error = Some("The page must be a whole number from 1.".into()),
            }
        }
        if !request.search.is_empty() {
            match validate_search(&request.search) {
                Ok(()) => request.filter.search = Some(request.search.clone()),
                Err(e) => request.error = Some(format!("The search {e}.")),
            }
        }
        if !request.state.is_empty() {
            match parse_service_state(&request.state) {
                Ok(state) => request.filter.state = Some(state),
                Err(e) => request.error = Some(format!("The state {e}.")),
            }
        }
        request
    }
}

impl OverviewRequest {
    /// The query string of page `page` of this list (`?` included; empty
    /// for the first page unfiltered).
    fn query_of_page(&self, page: u32) -> String {
        let mut params = Vec::new();
        if let Some(search) = &self.filter.search {
            params.push(format!(
                "search={}",
                utf8_percent_encode(search, QUERY_VALUE)
            ));
        }
        if let Some(state) = self.filter.state {
            params.push(format!("state={}", store::state_name(state)));
        }
        if page > 1 {
            params.push(format!("page={page}"));
        }
        if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        }
    }

    fn filtered(&self) -> bool {
        self.filter != FleetFilter::default()
    }

    pub fn search_form(&self) -> FleetSearch {
        FleetSearch {
            search: self.search.clone(),
            states: baton_proto::ServiceState::ALL
                .iter()
                .map(|state| Choice {
                    value: state.as_str(),
                    label: match state {
                        baton_proto::ServiceState::CrashLooping => "crash-looping",
                        other => other.as_str(),
                    },
                    selected: state.as_str() == self.state,
                })
                .collect(),
            filtered: self.filtered() || self.error.is_some(),
            error: self.error.clone(),
            live_url: format!("/live{}", self.query_of_page(self.page)),
        }
    }
}

/// Everything the overview shows, as its live stream re-renders it: the
/// fleet's numbers, the recent restarts, and one page of the fleet's list
/// from the database (every replica shows every host).
pub async fn overview_live(
    db: &Db,
    request: &OverviewRequest,
) -> anyhow::Result<OverviewLiveFragment> {
    let now = now_millis();
    let counts = store::fleet_counts(db).await?;
    let recent = store::list_restarts(
        db,
        &RestartFilter {
            limit: RECENT_RESTARTS,
            ..Default::default()
        },
    )
    .await?;
    let (rows, total) = if request.error.is_some() {
        (Vec::new(), 0)
    } else {
        let offset = u64::from(request.page - 1) * u64::from(OVERVIEW_PAGE);
        let page = store::list_fleet_services(db, &request.filter, offset, OVERVIEW_PAGE).await?;
        (page.services, page.total)
    };
    let mut services = Vec::with_capacity(rows.len());
    for row in &rows {
        let on_host = ServiceOnHost::from_status(&row.host, row.online, &row.status);
        services.push(FleetLine {
            service: row.status.name.clone(),
            host: host_line(db, &row.status.name, &on_host, now).await?,
        });
    }
    let first = u64::from(request.page - 1) * u64::from(OVERVIEW_PAGE);
    let last = first + services.len() as u64;
    let pager = Pager {
        shown: if services.is_empty() {
            format!("none of {total}")
        } else {
            format!("{}–{last} of {total}", first + 1)
        },
        first: (request.page > 2).then(|| format!("/{}", request.query_of_page(1))),
        previous: (request.page > 1).then(|| {
            // Past the end, back to the last page that has entries.
            let last_page = total.div_ceil(u64::from(OVERVIEW_PAGE)).max(1);
            let previous = u64::from(request.page - 1).min(last_page);
            format!("/{}", request.query_of_page(previous as u32))
        }),
        next: (last < total && !services.is_empty())
            .then(|| format!("/{}", request.query_of_page(request.page + 1))),
    };
    Ok(OverviewLiveFragment {
        summary: Summary {
            services: counts.services,
            hosts_online: counts.hosts_online,
            hosts: counts.hosts,
            draining: counts.draining,
            attention: counts.attention,
        },
        services,
        pager,
        filtered: request.filtered(),
        restarts: recent
            .restarts
            .iter()
            .map(|r| RestartLine::new(r, now))
            .collect(),
    })
}

pub async fn overview(
    SignedIn(session): SignedIn,
    query: web::Query<OverviewQuery>,
    db: web::Data<Db>,
) -> Result<HttpResponse, PageError> {
    let request = query.read();
    let live = overview_live(&db, &request).await?;
    let status = if request.error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    page_with_status(
        status,
        &live.into_page(
            Layout::for_session(&session, "overview"),
            request.search_form(),
        ),
    )
}

/// One service on one host as the pages list it; a crash-looping one also
/// says how its last generation ended and when the agent starts the next,
/// which only the stored events know.
async fn host_line(
    db: &Db,
    service: &str,
    on_host: &ServiceOnHost,
    now: baton_proto::UnixMillis,
) -> anyhow::Result<HostLine> {
    let mut line = HostLine::new(on_host, now);
    if on_host.state == baton_proto::ServiceState::CrashLooping
        && let Some(crash) = store::last_crash(db, &on_host.host, service).await?
    {
        line = line.with_last_crash(&crash, now);
    }
    Ok(line)
}

/// A service's hosts as the pages list them; a crash-looping one also says
/// how its last generation ended and when the agent starts the next, which
/// only the stored events know.
async fn host_lines(
    db: &Db,
    service: &baton_proto::api::Service,
    now: baton_proto::UnixMillis,
) -> anyhow::Result<Vec<HostLine>> {
    let mut lines = Vec::with_capacity(service.hosts.len());
    for on_host in &service.hosts {
        lines.push(host_line(db, &service.name, on_host, now).await?);
    }
    Ok(lines)
}

fn parse_service(name: &str) -> Result<ServiceName, PageError> {
    ServiceName::parse(name).map_err(|e| PageError::NotFound(e.to_string()))
}

/// The live part of the service page: hosts and the timeline.
pub async fn service_live(
    db: &Db,
    fleet: &Fleet,
    name: &ServiceName,
) -> anyhow::Result<ServiceLive> {
    let now = now_millis();
    let service = fleet.service(name.as_str());
    let generations =
        store::list_generations(db, name.as_str(), None, TIMELINE_GENERATIONS).await?;
    let running_restart = store::running_restart_of(db, name.as_str()).await?;
    Ok(ServiceLive {
        name: name.to_string(),
        hosts: match &service {
            Some(service) => host_lines(db, service, now).await?,
            None => Vec::new(),
        },
        timeline: timeline::render(&generations.generations, service.as_ref(), now),
        generations: generations
            .generations
            .iter()
            .take(GENERATION_LINES)
            .map(GenerationLine::new)
            .collect(),
        running_restart,
    })
}

pub async fn service(
    SignedIn(session): SignedIn,
    path: web::Path<String>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> Result<HttpResponse, PageError> {
    let name = parse_service(&path)?;
    let live = service_live(&db, &fleet, &name).await?;
    let restarts = store::list_restarts(
        &db,
        &RestartFilter {
            service: Some(name.to_string()),
            limit: RECENT_RESTARTS,
            ..Default::default()
        },
    )
    .await?;
    if live.hosts.is_empty()
        && restarts.restarts.is_empty()
        && live.timeline.contains("No generation")
    {
        return Err(PageError::NotFound(format!(
            "No host runs a service named {name}, and none ever did."
        )));
    }
    let now = now_millis();
    page(&ServicePage {
        layout: Layout::for_session(&session, "overview"),
        name: name.to_string(),
        host_count: live.hosts.len(),
        tail_lines: crate::dashboard::live::TAIL_LINES,
        live,
        restarts: restarts
            .restarts
            .iter()
            .map(|r| RestartLine::new(r, now))
            .collect(),
    })
}

fn require_operator(session: &Session) -> Result<(), PageError> {
    if session.can_restart() {
        Ok(())
    } else {
        Err(PageError::Forbidden(format!(
            "You are signed in as {} with a viewer token, which can look but not restart. \
             Sign in with an operator token to restart services.",
            session.name
        )))
    }
}

/// The confirmation step for browsers without JavaScript (with it, the same
/// form opens in a dialog on the service page).
pub async fn confirm_restart(
    SignedIn(session): SignedIn,
    path: web::Path<String>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> Result<HttpResponse, PageError> {
    let name = parse_service(&path)?;
    require_operator(&session)?;
    let service = fleet
        .service(name.as_str())
        .ok_or_else(|| PageError::NotFound(format!("No host runs a service named {name}.")))?;
    let now = now_millis();
    page(&ConfirmPage {
        layout: Layout::for_session(&session, "overview"),
        name: name.to_string(),
        hosts: service
            .hosts
            .iter()
            .map(|h| HostLine::new(h, now))
            .collect(),
        running_restart: store::running_restart_of(&db, name.as_str()).await?,
    })
}

#[derive(serde::Deserialize)]
pub struct RestartForm {
    csrf: Option<String>,
    reason: Option<String>,
}

/// The restart button's final POST: checks the form token before anything
/// else, then starts the restart and sends the browser to its live page.
pub async fn restart(
    request: HttpRequest,
    SignedIn(session): SignedIn,
    path: web::Path<String>,
    form: web::Form<RestartForm>,
    restarts: web::Data<Restarts>,
) -> Result<HttpResponse, PageError> {
    require_same_origin(&request)?;
    if !session.csrf_matches(form.csrf.as_deref()) {
        return Err(PageError::Forbidden(
            "This form is missing its security token or it has expired. \
             Go back, reload the page and try again."
                .into(),
        ));
    }
    require_operator(&session)?;
    let name = parse_service(&path)?;
    let reason = form
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| r.chars().take(MAX_REASON_CHARS).collect::<String>());
    let order = RestartOrder {
        reason: reason.as_deref(),
        requested_by: &session.name,
        ..Default::default()
    };
    match restarts.start(&name, &order).await {
        Ok(started) => Ok(see_other(&format!("/restarts/{}", started.id))),
        // The one already running is what the person wants to watch.
        Err(StartError::AlreadyRunning { restart_id, .. }) => {
            Ok(see_other(&format!("/restarts/{restart_id}")))
        }
        Err(error @ StartError::NoHostRunsIt(_)) => Err(PageError::NotFound(error.to_string())),
        Err(StartError::Invalid(message)) => Err(PageError::BadRequest(message)),
        Err(StartError::Unexpected(error)) => Err(PageError::Unexpected(error)),
    }
}

pub async fn restart_detail(db: &Db, fleet: &Fleet, id: u64) -> Result<RestartDetail, PageError> {
    let restart = store::get_restart(db, id)
        .await?
        .ok_or_else(|| PageError::NotFound(format!("There is no restart {id}.")))?;
    let live = if restart.state == RestartState::Running {
        fleet.service(&restart.service)
    } else {
        None
    };
    Ok(RestartDetail::new(&restart, live.as_ref(), now_millis()))
}

pub async fn restart_page(
    SignedIn(session): SignedIn,
    path: web::Path<String>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> Result<HttpResponse, PageError> {
    let id: u64 = path
        .parse()
        .map_err(|_| PageError::NotFound(format!("There is no restart {path}.")))?;
    page(&RestartPage {
        layout: Layout::for_session(&session, "restarts"),
        detail: restart_detail(&db, &fleet, id).await?,
    })
}

#[derive(serde::Deserialize)]
pub struct HistoryQuery {
    service: Option<String>,
    host: Option<String>,
    outcome: Option<String>,
    before: Option<u64>,
}

fn history_url(service: &str, host: &str, outcome: &str, before: Option<u64>) -> String {
    let mut params = Vec::new();
    for (key, value) in [("service", service), ("host", host), ("outcome", outcome)] {
        if !value.is_empty() {
            params.push(format!("{key}={}", utf8_percent_encode(value, QUERY_VALUE)));
        }
    }
    if let Some(before) = before {
        params.push(format!("before={before}"));
    }
    if params.is_empty() {
        "/restarts".into()
    } else {
        format!("/restarts?{}", params.join("&"))
    }
}

/// Newest first, 50 a page, paged by id (`before`), never by offset: each
/// page costs the same however deep, and the filters use the indexes.
pub async fn restarts(
    SignedIn(session): SignedIn,
    query: web::Query<HistoryQuery>,
    db: web::Data<Db>,
) -> Result<HttpResponse, PageError> {
    let query = query.into_inner();
    let service = query.service.unwrap_or_default().trim().to_string();
    let host = query.host.unwrap_or_default().trim().to_string();
    let outcome = query.outcome.unwrap_or_default();
    let mut error = None;
    let mut filter = RestartFilter {
        before: query.before,
        limit: HISTORY_PAGE,
        ..Default::default()
    };
    if !service.is_empty() {
        match ServiceName::parse(&service) {
            Ok(name) => filter.service = Some(name.to_string()),
            Err(e) => error = Some(e.to_string()),
        }
    }
    if !host.is_empty() {
        match validate_host_name(&host) {
            Ok(()) => filter.host = Some(host.clone()),
            Err(e) => error = Some(e),
        }
    }
    if !outcome.is_empty() {
        match outcome.parse::<RestartOutcome>() {
            Ok(o) => filter.outcome = Some(o),
            Err(e) => error = Some(e),
        }
    }
    let now = now_millis();
    let (lines, next_before) = if error.is_some() {
        (Vec::new(), None)
    } else {
        let page = store::list_restarts(&db, &filter).await?;
        (
            page.restarts
                .iter()
                .map(|r| RestartLine::new(r, now))
                .collect(),
            page.next_before,
        )
    };
    let outcomes = RestartOutcome::ALL
        .iter()
        .map(|o| Choice {
            value: o.as_str(),
            label: match o {
                RestartOutcome::Succeeded => "succeeded",
                RestartOutcome::Forced => "forced",
                RestartOutcome::RolledBack => "rolled back",
                RestartOutcome::Failed => "failed",
                RestartOutcome::Interrupted => "interrupted",
            },
            selected: o.as_str() == outcome,
        })
        .collect();
    let status = if error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    page_with_status(
        status,
        &RestartsPage {
            layout: Layout::for_session(&session, "restarts"),
            filtered: !(service.is_empty() && host.is_empty() && outcome.is_empty()),
            newer: query
                .before
                .map(|_| history_url(&service, &host, &outcome, None)),
            older: next_before.map(|b| history_url(&service, &host, &outcome, Some(b))),
            service,
            host,
            outcomes,
            error,
            restarts: lines,
        },
    )
}
