"""The commented starter mesh file that ``microhive init`` writes."""

from __future__ import annotations

from microhive.config.default_mesh import DEFAULT_BASE_PORT, services_yaml

__all__ = ["STARTER_YAML"]

_HEAD = """\
# microhive.yaml -- one agent, run as a mesh of small services.
#
# Every key below is optional unless marked; unknown keys are refused (a typo is
# an error with its line number, not a silently ignored setting).
#
# Environment overrides:
#   * ${NAME} or ${NAME:-default} inside any value reads an environment variable.
#   * MICROHIVE__A__B__C=value sets the key a.b.c ('__' separates levels), read as
#     YAML: MICROHIVE__SERVICES__GATEWAY__PORT=9000, MICROHIVE__BUS__URL=nats://...

version: 1
name: my-hive

# Address every service binds to unless its own 'host' says otherwise.
# Keep 127.0.0.1 unless the services must be reached from other machines.
host: 127.0.0.1

# The event bus. embedded:// needs no server (a durable log under .microhive/);
# at scale use nats://127.0.0.1:4222 (JetStream) or redis://127.0.0.1:6379/0.
bus:
  url: embedded://.microhive/bus
  max_deliveries: 5        # then the message goes to the dead-letter subject
  dedup_window: 120        # seconds during which a repeated message id is dropped

# Durable state. SQLite and local folders by default; postgresql://... at scale.
stores:
  workflow: sqlite:///.microhive/workflow.db
  traces: sqlite:///.microhive/traces.db
  workspace: file://.microhive/workspace

# Models, by name. 'offline' needs no key and no network (deterministic planner,
# extractive summariser/writer); its output is labelled offline.
models:
  default:
    provider: offline
  # fast:
  #   provider: openai            # any OpenAI-compatible server (vLLM, Ollama, ...)
  #   model: gpt-4o-mini
  #   base_url: ${OPENAI_BASE_URL:-https://api.openai.com/v1}
  #   api_key_env: OPENAI_API_KEY
  # strong:
  #   provider: anthropic
  #   model: claude-sonnet-4-5
  #   api_key_env: ANTHROPIC_API_KEY

# Agent roles: which model each uses and which tools (globs over namespace.tool)
# it may see and call through the gateway.
#   description: what the role does (the planner is told)
#   token_env:   variable holding the role's gateway token; once any role has one,
#                the gateway refuses callers without a token
roles:
  planner:
    model: default
  researcher:
    model: default
    description: searches the workspace and extracts material; saves findings
    tools: ["workspace.*", "pdf.*", "web.*", "calculator.*"]
    max_steps: 8
  summarizer:
    model: default
    description: condenses what was found into key points
    tools: ["workspace.*"]
  writer:
    model: default
    description: reads the findings and writes the report
    tools: ["workspace.*"]

# Security defaults are safe: loopback binds, outbound URLs to private or
# metadata addresses refused, MCP requests from foreign origins refused.
security:
  # token_env: MICROHIVE_TOKEN        # bearer token required between services
  allow_private_targets: false
  allowed_origins: []

# The services of the mesh; each replica is its own process.
#   kind:        what it is (app, command, or one of microhive's services)
#   port:        first port; replica i listens on port + i (omit: pick free ports)
#   replicas:    how many processes
#   app:         module:factory returning an ASGI app (kind: app)
#   command:     [program, args...] with {host} and {port} substituted (kind: command)
#   ready_path:  answers 200 when ready (null: the process being up is enough)
#   depends_on:  services started (and ready) first
#   grace_period: seconds in-flight work may take to finish on shutdown
#   settings:    what the kind needs (see docs/); e.g. a worker's role
"""

STARTER_YAML = _HEAD + services_yaml(DEFAULT_BASE_PORT)
