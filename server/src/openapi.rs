//! `GET /openapi.json`, written by hand next to the shapes in
//! `baton_proto::api`; the API tests check every route is listed.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn read_errors() -> Value {
    json!({
        "401": error_response("No token, or an unknown one."),
        "403": error_response("The token's role may not read (agent tokens)."),
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    base
}

fn service_name_parameter() -> Value {
    json!({
        "name": "name", "in": "path", "required": true,
        "description": "1 to 64 characters of [A-Za-z0-9._-], not starting with '.'; anything else is 422.",
        "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$" }
    })
}

fn page_parameters() -> Vec<Value> {
    vec![
        json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 } }),
        json!({ "name": "before", "in": "query", "description": "Only items with an id below this: the `next_before` of the previous page.", "schema": { "type": "integer" } }),
    ]
}

pub fn document() -> Value {
    let bearer = json!([{ "bearer": [] }]);
    let mut restart_list_parameters = vec![
        json!({ "name": "service", "in": "query", "schema": { "type": "string" } }),
        json!({ "name": "outcome", "in": "query", "schema": { "$ref": "#/components/schemas/Outcome" } }),
        json!({ "name": "host", "in": "query", "description": "Restarts that included this host.", "schema": { "type": "string" } }),
    ];
    restart_list_parameters.extend(page_parameters());
    let mut generation_parameters = vec![service_name_parameter()];
    generation_parameters.extend(page_parameters());

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "baton-server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Control plane of baton. Errors are always JSON {\"error\": \"...\"}. Reads need a viewer or operator token, restarts an operator token, the agent link an agent token; /healthz, /metrics and /openapi.json are open. Times are Unix milliseconds."
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {
                        "error": { "type": "string" },
                        "restart_id": { "type": "integer", "description": "On 409: the restart that is running." }
                    }
                },
                "Outcome": { "type": "string", "enum": ["succeeded", "forced", "rolled_back", "failed"] },
                "RestartRequest": {
                    "type": "object", "additionalProperties": false,
                    "properties": {
                        "reason": { "type": "string", "maxLength": 1024 },
                        "hosts": { "type": "array", "items": { "type": "string" }, "minItems": 1, "description": "Only these hosts (each must run the service); all when absent." },
                        "max_parallel": { "type": "integer", "minimum": 1, "default": 1 }
                    }
                },
                "Event": {
                    "type": "object", "required": ["seq", "at", "service", "event"],
                    "description": "An agent event (baton_proto::Event); the other fields depend on `event`.",
                    "properties": {
                        "seq": { "type": "integer" }, "at": { "type": "integer" },
                        "service": { "type": "string" }, "restart": { "type": "integer" },
                        "event": { "type": "string", "enum": ["restart_started", "generation_spawned", "generation_ready", "generation_status", "generation_draining", "drain_progress", "generation_killed", "generation_exited", "crash_restart_scheduled", "notify_ignored", "restart_finished"] }
                    }
                },
                "RestartHost": {
                    "type": "object", "required": ["host", "state", "steps"],
                    "properties": {
                        "host": { "type": "string" },
                        "state": { "type": "string", "enum": ["pending", "running", "finished", "skipped"] },
                        "outcome": { "$ref": "#/components/schemas/Outcome" },
                        "outcome_reason": { "type": "string" },
                        "agent_restart_id": { "type": "integer" },
                        "started_at": { "type": "integer" }, "finished_at": { "type": "integer" },
                        "steps": { "type": "array", "items": { "$ref": "#/components/schemas/Event" }, "description": "Empty in lists." }
                    }
                },
                "Restart": {
                    "type": "object", "required": ["id", "service", "state", "max_parallel", "created_at", "hosts"],
                    "properties": {
                        "id": { "type": "integer" }, "service": { "type": "string" },
                        "reason": { "type": "string" }, "requested_by": { "type": "string" },
                        "state": { "type": "string", "enum": ["running", "finished"] },
                        "outcome": { "$ref": "#/components/schemas/Outcome" },
                        "outcome_reason": { "type": "string", "description": "\"host NAME: reason\" of the first host that did not succeed." },
                        "max_parallel": { "type": "integer" },
                        "created_at": { "type": "integer" }, "finished_at": { "type": "integer" },
                        "hosts": { "type": "array", "items": { "$ref": "#/components/schemas/RestartHost" } }
                    }
                },
                "RestartPage": {
                    "type": "object", "required": ["restarts"],
                    "properties": {
                        "restarts": { "type": "array", "items": { "$ref": "#/components/schemas/Restart" } },
                        "next_before": { "type": "integer" }
                    }
                },
                "Generation": {
                    "type": "object", "required": ["generation", "pid", "state", "started_at"],
                    "properties": {
                        "generation": { "type": "integer" }, "pid": { "type": "integer" },
                        "state": { "type": "string", "enum": ["starting", "ready", "draining", "stopping"] },
                        "started_at": { "type": "integer" }, "ready_at": { "type": "integer" },
                        "status_text": { "type": "string" },
                        "connections": { "type": "integer", "description": "Established connections, from the kernel." }
                    }
                },
                "ServiceOnHost": {
                    "type": "object", "required": ["host", "online", "state", "draining", "consecutive_crashes"],
                    "description": "Every live generation is in exactly one of current, starting, draining and stopping.",
                    "properties": {
                        "host": { "type": "string" }, "online": { "type": "boolean" },
                        "state": { "type": "string", "enum": ["starting", "ready", "restarting", "crash_looping", "stopped"] },
                        "current": { "$ref": "#/components/schemas/Generation", "description": "The newest ready generation: the one that serves." },
                        "starting": { "type": "array", "items": { "$ref": "#/components/schemas/Generation" }, "description": "Absent when empty." },
                        "draining": { "type": "array", "items": { "$ref": "#/components/schemas/Generation" }, "description": "Old generations finishing their connections." },
                        "stopping": { "type": "array", "items": { "$ref": "#/components/schemas/Generation" }, "description": "Stopped without a drain; absent when empty." },
                        "consecutive_crashes": { "type": "integer" },
                        "running_restart": { "type": "integer", "description": "The agent's id of its running restart." }
                    }
                },
                "Service": {
                    "type": "object", "required": ["name", "hosts"],
                    "properties": {
                        "name": { "type": "string" },
                        "hosts": { "type": "array", "items": { "$ref": "#/components/schemas/ServiceOnHost" } }
                    }
                },
                "ServiceList": {
                    "type": "object", "required": ["services"],
                    "properties": { "services": { "type": "array", "items": { "$ref": "#/components/schemas/Service" } } }
                },
                "GenerationRecord": {
                    "type": "object", "required": ["id", "host", "service", "generation", "pid", "phase"],
                    "properties": {
                        "id": { "type": "integer" }, "host": { "type": "string" }, "service": { "type": "string" },
                        "generation": { "type": "integer" }, "pid": { "type": "integer" },
                        "phase": { "type": "string", "enum": ["starting", "ready", "draining", "exited"] },
                        "spawned_at": { "type": "integer" }, "ready_at": { "type": "integer" },
                        "draining_at": { "type": "integer" }, "exited_at": { "type": "integer" },
                        "exit_status": { "type": "string" }, "connections_cut": { "type": "integer" },
                        "agent_restart_id": { "type": "integer" }
                    }
                },
                "GenerationPage": {
                    "type": "object", "required": ["generations"],
                    "properties": {
                        "generations": { "type": "array", "items": { "$ref": "#/components/schemas/GenerationRecord" } },
                        "next_before": { "type": "integer" }
                    }
                },
                "Host": {
                    "type": "object", "required": ["name", "agent_version", "boot_id", "online", "first_seen", "last_seen", "services"],
                    "properties": {
                        "name": { "type": "string" }, "agent_version": { "type": "string" },
                        "boot_id": { "type": "string" }, "online": { "type": "boolean" },
                        "first_seen": { "type": "integer" }, "last_seen": { "type": "integer" },
                        "services": { "type": "array", "items": { "type": "string" } }
                    }
                },
                "HostList": {
                    "type": "object", "required": ["hosts"],
                    "properties": { "hosts": { "type": "array", "items": { "$ref": "#/components/schemas/Host" } } }
                }
            }
        },
        "paths": {
            "/healthz": { "get": {
                "summary": "The server and its database answer.",
                "responses": { "200": { "description": "{\"status\": \"ok\"}", "content": { "application/json": { "schema": { "type": "object" } } } } }
            } },
            "/metrics": { "get": {
                "summary": "Prometheus text: baton_restarts_total{outcome}, baton_restart_duration_seconds, baton_agents_online, baton_generations_draining.",
                "responses": { "200": { "description": "Prometheus text format 0.0.4", "content": { "text/plain": { "schema": { "type": "string" } } } } }
            } },
            "/openapi.json": { "get": {
                "summary": "This document.",
                "responses": { "200": { "description": "OpenAPI 3.1", "content": { "application/json": { "schema": { "type": "object" } } } } }
            } },
            "/services": { "get": {
                "summary": "Every service on every host, as last reported (offline hosts included, with online=false).",
                "description": "Gzipped for a client that sends Accept-Encoding: gzip. Every answer carries an ETag that changes with the fleet; a request whose If-None-Match holds it gets 304 and no body.",
                "security": bearer.clone(),
                "parameters": [
                    { "name": "If-None-Match", "in": "header", "required": false, "schema": { "type": "string" } },
                    { "name": "Accept-Encoding", "in": "header", "required": false, "schema": { "type": "string" } }
                ],
                "responses": merge(json!({
                    "200": json_response("Services by name", "ServiceList"),
                    "304": { "description": "Unchanged since the ETag sent in If-None-Match." }
                }), read_errors())
            } },
            "/services/{name}": { "get": {
                "summary": "One service: per host the current generation, draining generations with live connection counts.",
                "security": bearer.clone(),
                "parameters": [service_name_parameter()],
                "responses": merge(json!({
                    "200": json_response("The service", "Service"),
                    "404": error_response("No host runs it."),
                    "422": error_response("Invalid name.")
                }), read_errors())
            } },
            "/services/{name}/generations": { "get": {
                "summary": "Generation history of a service, newest first.",
                "security": bearer.clone(),
                "parameters": generation_parameters,
                "responses": merge(json!({
                    "200": json_response("A page of generations (empty for an unknown service)", "GenerationPage"),
                    "422": error_response("Invalid name or limit.")
                }), read_errors())
            } },
            "/services/{name}/restart": { "post": {
                "summary": "Rolling restart of a service on every host that runs it, one host at a time by host name, stopping at the first host that does not succeed.",
                "security": bearer.clone(),
                "parameters": [
                    service_name_parameter(),
                    { "name": "wait", "in": "query", "description": "Answer 200 when the restart has ended instead of 202 at once.", "schema": { "type": "boolean", "default": false } },
                    { "name": "Idempotency-Key", "in": "header", "description": "A retried request with the same key answers the same restart instead of starting another.", "schema": { "type": "string", "maxLength": 255 } }
                ],
                "requestBody": { "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/RestartRequest" } } } },
                "responses": {
                    "202": merge(json_response("Started; Location: /restarts/{id}", "Restart"), json!({ "headers": { "Location": { "schema": { "type": "string" } } } })),
                    "200": merge(json_response("With ?wait=true: the restart as it ended; Location: /restarts/{id}", "Restart"), json!({ "headers": { "Location": { "schema": { "type": "string" } } } })),
                    "400": error_response("Malformed JSON, unknown field or bad Idempotency-Key."),
                    "401": error_response("No token, or an unknown one."),
                    "403": error_response("Not an operator token."),
                    "404": error_response("No host runs the service."),
                    "409": error_response("A restart of the service is running; restart_id tells which."),
                    "413": error_response("Body over 16 KiB."),
                    "422": error_response("Invalid service name, max_parallel, hosts or reason; or an Idempotency-Key reused for another service.")
                }
            } },
            "/restarts": { "get": {
                "summary": "Restarts, newest first, without steps.",
                "security": bearer.clone(),
                "parameters": restart_list_parameters,
                "responses": merge(json!({
                    "200": json_response("A page of restarts", "RestartPage"),
                    "400": error_response("Unparsable query."),
                    "422": error_response("Invalid filter value.")
                }), read_errors())
            } },
            "/restarts/{id}": { "get": {
                "summary": "One restart with every host's steps (the agent's events) and outcome.",
                "security": bearer.clone(),
                "parameters": [{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }],
                "responses": merge(json!({
                    "200": json_response("The restart", "Restart"),
                    "404": error_response("No such restart.")
                }), read_errors())
            } },
            "/hosts": { "get": {
                "summary": "Every agent the server has seen.",
                "security": bearer.clone(),
                "responses": merge(json!({ "200": json_response("Hosts by name", "HostList") }), read_errors())
            } },
            "/agent/v1/connect": { "get": {
                "summary": "The agent link: a WebSocket of JSON text frames (baton_proto::link). First frame Hello, answered by Welcome{resume_after}; then Events (answered by Ack{seq}), Status every second, RestartStarted answers to Restart commands. Silence over 5 s marks the host offline.",
                "security": bearer.clone(),
                "responses": {
                    "101": { "description": "Switching protocols." },
                    "400": error_response("Not a WebSocket upgrade."),
                    "401": error_response("No token, or an unknown one."),
                    "403": error_response("Not an agent token.")
                }
            } }
        }
    })
}
