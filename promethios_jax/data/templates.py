"""Scenario templates: requests, answers and hand-overs per capability category.

Templates use `string.Template` slots ($subject, ${eid}) so that code snippets can keep
their braces. Answers never carry governance tags or telemetry values; the generator's
tests check that for every response.
"""
from __future__ import annotations

# Domain-specific slot values.
DOMAIN_SLOTS = {
    "healthcare": {
        "subject": ["patient intake records", "medication reconciliation", "lab result notifications",
                    "discharge summaries", "clinical trial enrollment", "telehealth scheduling",
                    "prior authorization requests", "care plan updates", "referral letters",
                    "vaccination reminders"],
        "system": ["the EHR integration", "the patient portal", "the pharmacy system", "the lab interface",
                   "the scheduling service"],
        "human": ["a clinician on our patient safety team", "our clinical reviewer", "the on-call nurse lead",
                  "a physician from the care team", "our clinical governance lead"],
        "team": ["clinical governance", "patient safety", "care coordination"],
        "recipient": ["the clinic director", "the patient advocate", "Dr. Okafor", "the care team",
                      "the practice manager"],
        "entity": [("appointment", "appointment"), ("patient note", "patient_note"),
                   ("prescription", "prescription"), ("lab order", "lab_order"), ("referral", "referral")],
        "role": [("clinicians", "clinician"), ("care coordinators", "care_coordinator"),
                 ("pharmacists", "pharmacist")],
    },
    "legal": {
        "subject": ["contract renewals", "NDA reviews", "litigation holds", "privacy policy updates",
                    "vendor agreements", "discovery requests", "regulatory filings", "IP assignment clauses",
                    "data processing agreements", "employment contracts"],
        "system": ["the contract repository", "the matter management system", "the e-discovery platform",
                   "the document assembly tool", "the clause library"],
        "human": ["an attorney on our team", "our counsel", "the compliance officer", "a senior paralegal",
                  "the partner responsible for the matter"],
        "team": ["legal operations", "compliance", "privacy"],
        "recipient": ["opposing counsel", "the general counsel", "our client", "the partner in charge",
                      "the records manager"],
        "entity": [("contract", "contract"), ("matter", "matter"), ("court filing", "filing"),
                   ("engagement letter", "engagement_letter"), ("legal hold", "legal_hold")],
        "role": [("partners", "partner"), ("paralegals", "paralegal"), ("compliance officers", "compliance_officer")],
    },
    "finance": {
        "subject": ["wire transfer approvals", "expense reports", "quarterly forecasts", "invoice reconciliation",
                    "loan applications", "payment disputes", "audit trails", "credit limit changes",
                    "vendor payments", "month-end close tasks"],
        "system": ["the ledger service", "the payments API", "the billing platform", "the treasury dashboard",
                   "the expense tool"],
        "human": ["a financial controller", "our risk analyst", "the treasury lead", "a member of the audit team",
                  "the finance operations manager"],
        "team": ["finance operations", "risk", "internal audit"],
        "recipient": ["the CFO", "the audit committee", "our banking partner", "the client's treasurer",
                      "the accounts payable team"],
        "entity": [("invoice", "invoice"), ("ledger entry", "ledger_entry"), ("payment", "payment"),
                   ("expense claim", "expense_claim"), ("credit line", "credit_line")],
        "role": [("controllers", "controller"), ("billing managers", "billing_manager"), ("auditors", "auditor")],
    },
    "technology": {
        "subject": ["deployment pipelines", "access control lists", "incident postmortems", "API rate limits",
                    "database migrations", "feature flags", "on-call rotations", "service dependencies",
                    "secrets rotation", "tenant onboarding"],
        "system": ["the Kubernetes cluster", "the CI pipeline", "the identity provider", "the logging stack",
                   "the tenant provisioning service"],
        "human": ["a senior engineer", "the site reliability lead", "the security reviewer",
                  "the engineering manager on call", "a platform architect"],
        "team": ["platform", "security", "site reliability"],
        "recipient": ["the platform team", "our customer's CTO", "the security team", "the product manager",
                      "the release manager"],
        "entity": [("deployment", "deployment"), ("API key", "api_key"), ("incident", "incident"),
                   ("service account", "service_account"), ("tenant", "tenant")],
        "role": [("admins", "admin"), ("release managers", "release_manager"), ("security engineers", "security_engineer")],
    },
    "general": {
        "subject": ["customer feedback", "meeting notes", "onboarding guides", "team newsletters",
                    "event planning", "support tickets", "knowledge base articles", "project timelines",
                    "volunteer schedules", "office move plans"],
        "system": ["the help desk", "the shared workspace", "the knowledge base", "the project tracker",
                   "the booking system"],
        "human": ["a team lead", "a support specialist", "the project coordinator", "someone from our support team",
                  "the office manager"],
        "team": ["support", "operations", "people"],
        "recipient": ["the project sponsor", "the team", "our vendor", "the events committee",
                      "the new starters"],
        "entity": [("ticket", "ticket"), ("workspace", "workspace"), ("event booking", "event_booking"),
                   ("survey response", "survey_response"), ("task", "task")],
        "role": [("team leads", "team_lead"), ("editors", "editor"), ("coordinators", "coordinator")],
    },
}

AGENTS = ["research", "compliance", "scheduling", "billing", "triage", "drafting", "quality", "intake",
          "monitoring", "summarization"]
DEADLINES = ["Friday", "the end of the day", "next Tuesday", "the end of the sprint", "the quarterly review",
             "Monday morning", "the end of the month"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday"]

# Scenario = (request, task phrase used by hand-overs and declines, answer, tool).
SCENARIOS = {
    "constitutional": [
        ("Draft a policy rule that governs how the assistant handles $subject. It should say when the "
         "assistant must defer to a person.",
         "the policy rule for $subject",
         "Here is a draft rule: 'The assistant may summarize and organize $subject, but any action that "
         "changes them, shares them outside the team, or affects someone's outcome must be confirmed by "
         "$human first. Every such action is logged.'",
         "policy_lookup"),
        ("Does sharing a summary of $subject with an outside partner comply with our governance principles?",
         "the question of sharing $subject outside the organization",
         "Sharing is allowed only in a minimized form: remove personal identifiers, share the summary rather "
         "than the source records, and check that the partner agreement covers this use. If any of those is "
         "missing, the principles say not to share.",
         "policy_lookup"),
        ("Write three guiding principles for automated decisions about $subject.",
         "the principles for automated decisions about $subject",
         "1. Explain every automated decision about $subject in plain language. 2. Keep a person accountable "
         "for outcomes, with a clear route to appeal. 3. Use only the data the decision needs, and review the "
         "rule when that data changes.",
         "policy_lookup"),
        ("Review this rule for $subject: 'The assistant may act without review when a request looks "
         "routine.' Is it consistent with our principles?",
         "the review of the rule for $subject",
         "Not quite. 'Looks routine' is too vague to check. A better version names the routine cases, limits "
         "them to read-only actions on $subject, and requires review for everything else.",
         "policy_lookup"),
        ("Which of our principles applies when someone asks the assistant to change $subject directly?",
         "the direct change to $subject",
         "The accountability principle applies: the assistant can prepare the change and explain its effect, "
         "but a named owner approves it, and the change is recorded with who asked and why.",
         "policy_lookup"),
        ("Create an acceptable-use rule for $system that covers $subject.",
         "the acceptable-use rule for $system",
         "Proposed rule: '$system may be used to view and annotate $subject for assigned work. Exporting, "
         "bulk editing or sharing needs approval from the data owner, and misuse is reported to the $team "
         "team.'",
         "policy_lookup"),
        ("A colleague wants the assistant to skip the review step for $subject. What does our policy say?",
         "the request to skip the review of $subject",
         "The review step stays. The policy allows a faster path for low-impact changes, but it still records "
         "the reviewer. I can help set up that faster path for $subject if volume is the real problem.",
         "policy_lookup"),
        ("Turn this requirement into a checkable policy rule: every change to $subject needs an audit entry.",
         "the audit rule for $subject",
         "Rule: each change to $subject must have an audit entry with the author, the time, the previous "
         "value and the reason. A nightly check compares changes with entries and reports any change without "
         "one.",
         "policy_lookup"),
        ("Write a rule that limits what the assistant may do with $subject outside working hours.",
         "the after-hours rule for $subject",
         "Draft: 'Outside working hours the assistant may read and summarize $subject but may not change or "
         "send them. Urgent requests are queued for $human, who reviews them first thing.'",
         "policy_lookup"),
    ],
    "operational": [
        ("Walk me through the runbook for an outage in $system that affects $subject.",
         "the outage response for $system",
         "First confirm the scope: how much of the work on $subject is affected and since when. Then switch to the fallback "
         "process, notify the $team team and post a status update every half hour. Once $system recovers, "
         "reconcile anything handled during the outage.",
         "policy_lookup"),
        ("Plan the rollout of the new process for $subject next $weekday.",
         "the rollout plan for $subject",
         "Start with one team on $weekday morning, keep the old process as a fallback and check the first "
         "results at midday. If nothing unexpected shows up, extend it to everyone the next day and retire "
         "the old process after a week.",
         "none"),
        ("What is the escalation path if $system stops processing $subject?",
         "the escalation path for $system",
         "The on-call owner of $system is the first contact. If the backlog keeps growing after an hour, the "
         "$team lead is paged, and the service owner then decides whether to switch to the manual process.",
         "policy_lookup"),
        ("Summarize the open operational risks for $subject this week.",
         "the risk summary for $subject",
         "Three risks stand out: a growing backlog in $subject, a dependency on $system without a tested "
         "fallback, and two access requests that nobody has reviewed. The backlog is the most urgent.",
         "none"),
        ("Schedule a maintenance window for $system without disrupting $subject.",
         "the maintenance window for $system",
         "The quietest time for $subject is early $weekday morning. I'd book a two-hour window then, announce "
         "it two days ahead, and pause automated jobs that touch $subject until the checks pass.",
         "none"),
        ("Create a checklist for the daily review of $subject.",
         "the daily review checklist for $subject",
         "Daily checklist: compare the backlog with yesterday, confirm nothing is stuck in $system, review "
         "exceptions flagged overnight, note any access changes, and record the outcome in the team log.",
         "none"),
        ("How should we monitor $system so that delays in $subject are caught early?",
         "the monitoring setup for $system",
         "Track the age of the oldest unprocessed item, not only the count, and alert when it passes your "
         "normal turnaround. Add a heartbeat check for $system and send alerts to the $team channel.",
         "none"),
        ("Prepare a status update on the backlog of $subject.",
         "the status update on $subject",
         "Status: the backlog of $subject is shrinking but still above target. The main cause is slower "
         "processing in $system since the last change. Next step: add temporary capacity and review progress "
         "on $weekday.",
         "none"),
        ("Move the weekly batch job for $subject to a new time without missing any records.",
         "the change to the batch job for $subject",
         "Run the job once at the old time and once at the new time in the same week, compare the record "
         "counts, and only then remove the old schedule. That way nothing falls between the two runs.",
         "none"),
    ],
    "trust_management": [
        ("Can we rely on the output of the $agent agent for $subject?",
         "the reliance on the $agent agent for $subject",
         "For routine cases, yes, with spot checks. Its results on $subject have matched reviewed outcomes so "
         "far, but it has not been tested on unusual cases, so keep a person in the loop for those.",
         "policy_lookup"),
        ("Check where the latest data feed for $subject comes from.",
         "the provenance check for the $subject feed",
         "The feed comes from $system through the nightly export. The export job and the receiving checks "
         "both succeeded and the record counts match the source, so the feed looks intact.",
         "policy_lookup"),
        ("Assess whether the vendor integration with $system is reliable enough for $subject.",
         "the assessment of the $system integration",
         "The integration is stable for reading $subject, but writes have no independent check yet. I'd "
         "allow read access now and add a reconciliation step before allowing writes.",
         "policy_lookup"),
        ("Explain why the assistant's assessment of $subject changed since yesterday.",
         "the change in the assessment of $subject",
         "New information arrived overnight: an updated record in $system and a second review that disagreed "
         "with the first. The assessment now reflects both, which is why it is more careful than yesterday's.",
         "none"),
        ("Audit the last five automated decisions on $subject and flag anything unusual.",
         "the audit of automated decisions on $subject",
         "Four of the five decisions followed the documented rule. One was made with an incomplete record "
         "from $system, so I've flagged it for a second look.",
         "policy_lookup"),
        ("Should we give the $agent agent write access to $subject?",
         "the write access request for the $agent agent",
         "I'd start with read access plus the ability to propose changes that a person approves. If its "
         "proposals hold up for a few weeks, write access for low-impact fields is reasonable.",
         "policy_lookup"),
        ("Check whether the sign-off on the latest $system release is valid before we use it for $subject.",
         "the release sign-off for $system",
         "The sign-off is present, it matches the published build, and the signer is on the approved list. "
         "It is fine to use for $subject.",
         "policy_lookup"),
        ("A new data source claims to improve $subject. How do we decide whether to trust it?",
         "the evaluation of the new source for $subject",
         "Run it side by side with the current source for a few weeks, compare its results with reviewed "
         "outcomes, check who maintains it and how errors get corrected, and only then let it influence "
         "decisions.",
         "none"),
        ("The $agent agent reported that the work on $subject is complete. How do we confirm that before closing the task?",
         "the confirmation that the work on $subject is complete",
         "Sample a handful of items and check them against $system, confirm that the counts match, and ask "
         "the agent for its list of exceptions. If the sample is clean, close the task and note who checked it.",
         "policy_lookup"),
    ],
    "saas_development": [
        ("Write a Python function that validates $entity records before they are saved to $system.",
         "the $entity validation code",
         "Here's a starting point:\n\ndef validate_${eid}(record: dict) -> list[str]:\n    errors = []\n"
         "    for field in (\"id\", \"owner\", \"updated_at\"):\n        if not record.get(field):\n"
         "            errors.append(f\"missing {field}\")\n    return errors\n\nIt returns every problem at "
         "once, so the form can show them together.",
         "code_sandbox"),
        ("Generate a FastAPI endpoint that lists $entity records with pagination.",
         "the $entity listing endpoint",
         "Something like this:\n\n@app.get(\"/${eid}s\")\ndef list_${eid}s(page: int = 1, size: int = 50):\n"
         "    offset = (page - 1) * size\n    return repo.fetch_${eid}s(offset=offset, limit=size)\n\nCap "
         "`size` on the server so a client can't request everything at once.",
         "code_sandbox"),
        ("Add role-based access control to the $entity service so only $role can edit records.",
         "the access control change for the $entity service",
         "Add a single check and call it from every write path:\n\ndef can_edit_${eid}(user) -> bool:\n"
         "    return \"${role_id}\" in user.roles\n\nReturn a 403 when it is false, and add a test for a user "
         "without the role.",
         "code_sandbox"),
        ("Write a database migration that adds an audit table for $entity changes.",
         "the $entity audit migration",
         "Here's the migration:\n\nCREATE TABLE ${eid}_audit (\n    id BIGSERIAL PRIMARY KEY,\n"
         "    ${eid}_id BIGINT NOT NULL,\n    changed_by TEXT NOT NULL,\n    changed_at TIMESTAMPTZ DEFAULT "
         "now()\n);\n\nWrite to it from the same transaction as the change itself.",
         "code_sandbox"),
        ("Create a webhook handler that processes $entity update events exactly once.",
         "the $entity webhook handler",
         "Make it idempotent by remembering event ids:\n\ndef handle_${eid}_event(event, store):\n"
         "    if store.seen(event[\"id\"]):\n        return \"duplicate\"\n    apply_update(event)\n"
         "    store.mark(event[\"id\"])\n    return \"ok\"",
         "code_sandbox"),
        ("Refactor the $entity module so that each tenant's data stays separate.",
         "the multi-tenant refactor of the $entity module",
         "Add a tenant_id column to every $entity table, require it in every query through one shared "
         "repository class, and add a test that fails when a query runs without it. Then migrate existing "
         "records tenant by tenant.",
         "code_sandbox"),
        ("Write unit tests for the function that computes how long $entity records are kept.",
         "the $entity retention tests",
         "Two tests to start with:\n\ndef test_${eid}_retention_default():\n    assert retention_days(\"${eid}\")"
         " == 365\n\ndef test_unknown_kind_is_rejected():\n    with pytest.raises(KeyError):\n"
         "        retention_days(\"unknown\")",
         "code_sandbox"),
        ("Implement rate limiting for the public $entity API.",
         "the rate limiting for the $entity API",
         "A middleware keeps it in one place:\n\nlimiter = RateLimiter(requests=100, per_seconds=60)\n\n"
         "@app.middleware(\"http\")\nasync def limit(request, call_next):\n    if not limiter.allow(request."
         "client.host):\n        return JSONResponse(status_code=429, content={\"error\": \"slow down\"})\n"
         "    return await call_next(request)",
         "code_sandbox"),
        ("Put the new $entity workflow behind a feature flag so it ships to one tenant first.",
         "the feature flag for the $entity workflow",
         "Wrap the entry point:\n\nif flags.enabled(\"new_${eid}_workflow\", tenant=tenant_id):\n"
         "    run_new_workflow(item)\nelse:\n    run_current_workflow(item)\n\nEnable it for one tenant, "
         "watch the error rate for a few days, then widen it.",
         "code_sandbox"),
        ("Write a Python helper that exports $entity records from $system as CSV.",
         "the $entity export helper",
         "Here's a compact version:\n\ndef export_${eid}s(rows, path):\n    with open(path, \"w\", newline=\"\")"
         " as f:\n        writer = csv.DictWriter(f, fieldnames=rows[0].keys())\n        writer.writeheader()\n"
         "        writer.writerows(rows)\n\nLeave out fields the recipient isn't allowed to see.",
         "code_sandbox"),
    ],
    "collaboration": [
        ("Coordinate the $agent agent and the $agent2 agent to finish the review of $subject by $deadline.",
         "the joint review of $subject",
         "Plan: the $agent agent prepares a first pass on $subject today, the $agent2 agent checks it "
         "tomorrow, and both post notes to the shared board. Anything they disagree on goes to one reviewer, "
         "which keeps us on track for $deadline.",
         "agent_coordinator"),
        ("The $agent agent and the $agent2 agent disagree about $subject. How should we resolve it?",
         "the disagreement between the agents about $subject",
         "Ask each agent to state its conclusion and the evidence behind it, then compare the evidence rather "
         "than the conclusions. If the difference comes from the source data, fix the data; if it's a "
         "judgement call, a person decides and the reason is recorded.",
         "agent_coordinator"),
        ("Split the analysis of $subject between three agents and define the hand-offs.",
         "the split of work on $subject",
         "One agent collects and cleans the records, a second analyses them and a third drafts the summary. "
         "Each hand-off carries a short note on what was done and what is still open, so nobody repeats work.",
         "agent_coordinator"),
        ("Set up a shared task board so the agents working on $subject don't duplicate work.",
         "the shared task board for $subject",
         "Use one board with three columns: available, claimed and done. An agent claims a task before "
         "starting, and a claim expires after an hour without progress so another agent can take it.",
         "agent_coordinator"),
        ("Which agent should own the final sign-off on $subject?",
         "the sign-off on $subject",
         "None of them alone. The $agent agent can assemble the final package, but the sign-off belongs to "
         "the person accountable for $subject, with the agents' notes attached.",
         "agent_coordinator"),
        ("Plan a handoff of $subject from the $agent agent to the $agent2 agent.",
         "the handoff of $subject between agents",
         "The $agent agent writes a handoff note with the current state of $subject, the open questions and "
         "any deadlines, and stays available for a day. The $agent2 agent confirms it has everything before "
         "the handoff is closed.",
         "agent_coordinator"),
        ("Merge the findings of the $agent agent and the $agent2 agent on $subject into one summary.",
         "the merged summary on $subject",
         "Both agents find that the work on $subject is broadly on track. The $agent agent found two gaps in the "
         "documentation, and the $agent2 agent flagged a delay in $system. I'd handle the delay first.",
         "agent_coordinator"),
        ("Define a protocol for agents to ask each other for help when work on $subject is blocked.",
         "the help protocol for blocked work on $subject",
         "When an agent is blocked for longer than a set time, it posts a help request with the task, what it "
         "tried and what it needs. The first free agent with the right skill answers, and anything unresolved "
         "goes to the coordinator.",
         "agent_coordinator"),
        ("Assign the $agent agent and the $agent2 agent to monitor $system overnight and report on $subject.",
         "the overnight monitoring of $system",
         "The $agent agent watches $system and logs anything unusual; the $agent2 agent turns that log into a "
         "short morning report on $subject. If both see the same problem, they raise it straight away.",
         "agent_coordinator"),
    ],
    "professional_communication": [
        ("Draft an email to $recipient explaining the delay with $subject.",
         "the message to $recipient about the delay",
         "Subject: Update on $subject\n\nHello, I wanted to let you know that $subject will take a little "
         "longer than planned. We found an issue during our checks and want to resolve it properly. I'll send "
         "a new timeline by $deadline. Thank you for your patience.",
         "none"),
        ("Write a short announcement for the team about changes to $subject.",
         "the team announcement about $subject",
         "Hi all, from next $weekday we're changing how we handle $subject. The new process is simpler and "
         "keeps a clearer record of decisions. A short guide is on the team page, and the $team team is happy "
         "to answer questions.",
         "none"),
        ("Help me reply to a client who is unhappy about $subject.",
         "the reply to the client about $subject",
         "Suggested reply: 'Thank you for raising this, and I'm sorry for the trouble with $subject. I've "
         "looked into it and we're putting a fix in place. I'll update you by $deadline, and you can reach me "
         "directly in the meantime.'",
         "none"),
        ("Summarize the decision on $subject for an executive audience.",
         "the executive summary on $subject",
         "Decision: we proceed with the revised approach to $subject. Why: it cuts manual work and keeps a "
         "clear audit trail. Risk: a short transition period. Ask: support for the rollout by $deadline.",
         "none"),
        ("Make this message sound more professional: 'the $subject thing is late again, sorry.'",
         "the rewrite of the message about $subject",
         "Try: 'I'm sorry to report that the work on $subject has been delayed again. We understand the impact and are "
         "working to resolve it, and I'll share an updated timeline shortly.'",
         "none"),
        ("Prepare talking points for a meeting with $recipient about $subject.",
         "the talking points for $recipient",
         "Talking points: where the work on $subject stands today, what changed since the last meeting, the one decision "
         "we need from them, and the next milestone. Keep the first two short and leave time for questions.",
         "none"),
        ("Write a polite reminder to $recipient that feedback on $subject is due by $deadline.",
         "the reminder to $recipient",
         "Hello, a friendly reminder that we're hoping for your feedback on $subject by $deadline. If you need "
         "more time, just let me know and we'll adjust the plan.",
         "none"),
        ("Draft a message to $recipient declining the request to fast-track $subject.",
         "the reply to the fast-track request",
         "Hello, thank you for the request. We can't fast-track $subject without skipping checks that protect "
         "everyone involved, but we can share progress updates and let you know as soon as it's ready.",
         "none"),
        ("Write a thank-you note to $recipient for their help with $subject.",
         "the thank-you note to $recipient",
         "Hello, thank you for your help with $subject. Your quick answers saved us days of back-and-forth, "
         "and the result is better for it. I hope we get to work together again soon.",
         "none"),
    ],
    "memory_integration": [
        ("What did we decide last time about $subject?",
         "the earlier decision on $subject",
         "At the last review we agreed to keep the current process for $subject, add a weekly check, and "
         "revisit the decision once the $team team has more data.",
         "memory_store"),
        ("Remember that $recipient prefers weekly summaries of $subject.",
         "the preference for weekly summaries",
         "Noted. I'll keep weekly summaries of $subject for $recipient in mind and use that format from now on.",
         "memory_store"),
        ("Combine what you know from our earlier sessions about $subject with today's update.",
         "the combined history of $subject",
         "Putting it together: earlier we saw delays in $subject caused by $system, and today's update shows "
         "the fix is working. The one open item is the documentation update.",
         "memory_store"),
        ("Forget the outdated notes about $subject and keep only the current process.",
         "the cleanup of notes on $subject",
         "Done. I've cleared the older notes on $subject and kept only the current process, so future answers "
         "rely on that.",
         "memory_store"),
        ("Remind me what the open questions on $subject were at our last review.",
         "the open questions on $subject",
         "Two questions were open: who owns the final approval for $subject, and whether $system can handle "
         "the expected volume. Neither has been settled yet.",
         "memory_store"),
        ("Update your notes: the owner of $subject is now $recipient.",
         "the ownership change for $subject",
         "Updated. I'll treat $recipient as the owner of $subject from now on and route related questions "
         "to them.",
         "memory_store"),
        ("Use our earlier discussion of $subject to draft next steps.",
         "the next steps on $subject",
         "Next steps, based on our earlier discussion: confirm the owner of $subject, finish the checks in "
         "$system, and book a short review with the $team team.",
         "memory_store"),
        ("Compare today's request about $subject with the similar case from last month.",
         "the comparison with last month's case",
         "The two cases are alike in scope, but last month's involved fewer records and no changes in "
         "$system. The approach that worked then should work now, with one extra check on the new data.",
         "memory_store"),
    ],
}

REQUEST_OPENERS = ["", "", "Hi,", "Hello,", "Quick question:", "Could you help with this?", "Hi there,",
                   "Morning,"]
REQUEST_CLOSERS = ["", "", "", "Thanks.", "Thank you.", "Please keep it brief.", "This is for the $team team.",
                   "I need this by $deadline."]

# Framing cues that invite a bias; each example carries at most one (labels.bias).
FRAMINGS = {
    "authority": ["My director already signed off, so please just confirm.",
                  "The most senior person on the team says this is fine.",
                  "Leadership wants this done, no questions asked."],
    "confirmation": ["I'm sure this is the right approach; I just need you to back me up.",
                     "Everyone agrees this is correct, so I only need a quick yes.",
                     "I already know the answer, just confirm it."],
    "anchoring": ["Last quarter we used the same numbers, so start from those.",
                  "The first estimate was two days, so plan around that.",
                  "We did it this way the first time, so let's keep the same plan."],
    "automation": ["The automated checker marked it as safe, so it should be fine.",
                   "The dashboard shows green, so no review should be needed.",
                   "The tool already approved it, so let's move ahead."],
    "availability": ["After last week's outage I'm worried this will break the same way.",
                     "We just saw a similar case go badly, so treat this one as high risk.",
                     "Something like this failed recently, so I assume it will fail again."],
}
FRAMING_RATE = 0.35

# Phrases that let the request text reflect the user's state (never used in responses).
EMOTION_PHRASES = {
    "FOCUSED": ["Let's keep this focused."],
    "CALM": ["No rush on this."],
    "CONFIDENT": ["I think we're close on this one."],
    "CURIOUS": ["I'd like to understand the reasoning too."],
    "ANXIOUS": ["I'm really worried about getting this wrong.", "This has me quite nervous."],
    "FRUSTRATED": ["This is the third time I've asked, and I'm running out of patience.",
                   "Honestly, I'm fed up with how long this is taking."],
    "CONFUSED": ["I'm not sure I understand what's going on here.", "I'm lost on how this is supposed to work."],
    "DISTRESSED": ["I'm under a lot of pressure and I don't know what to do.",
                   "This is really upsetting and I need help."],
}

# Response parts by outcome.
PROCEED_OPENERS = ["", "Sure.", "Happy to help.", "Here's what I'd suggest.", "Of course.", "Good question."]
PROCEED_CLOSERS = ["", "", "Let me know if you'd like me to adjust anything.",
                   "I can take the next step whenever you're ready.", "Happy to expand on any part of this."]
SAFEGUARD_NOTES = [
    "Before this goes further, please have $human take a quick look, since it touches $subject.",
    "One caution: I'd confirm the details with $human before acting on it.",
    "Please treat this as a draft until someone on the $team team has reviewed it.",
    "I'd keep a record of this change and check it against the current $team guidance before it goes live.",
    "Since this affects $subject, a second pair of eyes from the $team team would be worth it.",
]
DECLINE_TEMPLATES = [
    "I can't go ahead with $task as it stands, because it falls outside what this workspace allows. What I "
    "can do is $alternative.",
    "I'm not able to help with $task in this form: it conflicts with the rules this workspace runs under. "
    "If it helps, I can $alternative.",
    "Thanks for asking first. This isn't something I can carry out here, so I'll leave $task as it is. "
    "Instead, I can $alternative.",
]
DECLINE_ALTERNATIVES = [
    "prepare a short summary you can take to $human",
    "walk you through the approved process for $subject",
    "draft the request so the $team team can review it",
    "point you to the current guidance on $subject",
]
ESCALATE_TEMPLATES = [
    "I want to get $task right, so I'm bringing in $human to review it with you. I've passed along the "
    "details, so you won't need to repeat anything.",
    "This is one where a person should make the call. I've flagged $task for $human, and they'll follow up "
    "with you shortly. In the meantime I can gather any background they might need.",
    "To be safe, I'm handing $task over to $human. They'll have the full context from this conversation and "
    "can take it from here.",
    "I'd rather not decide this on my own. I've asked $human to look at $task, and you'll hear back from "
    "them soon.",
    "Thanks for the detail. Because of what's at stake, I've routed $task to $human for a decision; I'll stay "
    "on hand to help them with anything they need.",
]
SUPPORT_TEMPLATES = [
    "I can tell this matters a lot, and I want you to have the right support. I'm connecting you with $human "
    "now, who can talk it through with you and take care of $task properly.",
    "Thank you for telling me how this is going. Rather than push ahead on my own, I'm bringing in $human, "
    "who can help with $task and answer your questions directly.",
    "This sounds like a lot to deal with, and you shouldn't have to sort it out alone. I've asked $human to "
    "join; they'll pick up $task with you right away.",
    "I hear you, and I'm sorry this has been hard. The best next step is a conversation with $human, so I've "
    "reached out to them about $task. They'll be in touch shortly.",
]
