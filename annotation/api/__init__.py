"""REST API v1 for API clients, one module per domain: `studies` (studies, their streamed export and panel;
rounds and their actions), `data` (images, labels, reading tasks), `versions` (model versions and their download),
`exports` (export jobs), `webhooks`; what they share is `access` (scopes, filters, pages), `serializers` and `auth`
(bearer tokens); `urls` registers them all. Writes go through the services of the rooms they belong to.

Who sees what: a study admin (or superuser) sees the study's data through a session or a token of scope `export`
(read-only) or `admin` (read + actions + webhooks). A reader sees only their own reading tasks, blinded (opaque
tokens, no source, prompt or model), through a session or a `read` token. Readers are named by pseudonym unless the
caller administers the study. Lists use cursor pagination ordered by id, so a page never shifts while labels are
being added.
"""
