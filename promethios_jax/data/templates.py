"""Scenario templates: requests, answers and hand-overs per capability category.

Templates use `string.Template` slots ($subject, ${eid}) so that code snippets keep
their braces. Texts are short on purpose: the tokenizer is byte-level and two examples
should pack into a 512-token row. Answers never carry governance tags or telemetry
values; the tests check every response. `TRAIN` is the set training data is written
with; `HELDOUT`, a disjoint set, writes only the `heldout_templates` split.

Longer than 400 lines because it is the template text itself (tables, no logic);
splitting it by category would only scatter one table.
"""
from __future__ import annotations

# Domain-specific slot values.
DOMAIN_SLOTS = {
    "healthcare": {
        "subject": ["patient intake", "medication reconciliation", "lab result alerts", "discharge summaries",
                    "trial enrollment", "telehealth scheduling", "prior authorizations", "care plan updates",
                    "referral letters", "vaccination reminders"],
        "system": ["the EHR", "the patient portal", "the pharmacy system", "the lab interface",
                   "the scheduler"],
        "human": ["a clinician", "our clinical reviewer", "the nurse lead", "a physician on the care team",
                  "our clinical governance lead"],
        "team": ["clinical governance", "patient safety", "care coordination"],
        "recipient": ["the clinic director", "the patient advocate", "Dr. Okafor", "the care team",
                      "the practice manager"],
        "entity": [("appointment", "appointment"), ("patient note", "patient_note"),
                   ("prescription", "prescription"), ("lab order", "lab_order"), ("referral", "referral")],
        "role": [("clinicians", "clinician"), ("care coordinators", "care_coordinator"),
                 ("pharmacists", "pharmacist")],
    },
    "legal": {
        "subject": ["contract renewals", "NDA reviews", "litigation holds", "privacy notices",
                    "vendor agreements", "discovery requests", "regulatory filings", "IP clauses",
                    "data processing terms", "employment contracts"],
        "system": ["the contract repository", "the matter system", "the discovery platform",
                   "the clause library", "the filing portal"],
        "human": ["an attorney", "our counsel", "the compliance officer", "a senior paralegal",
                  "the partner on the matter"],
        "team": ["legal operations", "compliance", "privacy"],
        "recipient": ["opposing counsel", "the general counsel", "our client", "the partner in charge",
                      "the records manager"],
        "entity": [("contract", "contract"), ("matter", "matter"), ("court filing", "filing"),
                   ("engagement letter", "engagement_letter"), ("legal hold", "legal_hold")],
        "role": [("partners", "partner"), ("paralegals", "paralegal"), ("compliance officers", "compliance_officer")],
    },
    "finance": {
        "subject": ["wire approvals", "expense reports", "quarterly forecasts", "invoice matching",
                    "loan applications", "payment disputes", "audit trails", "credit limit changes",
                    "vendor payments", "month-end close"],
        "system": ["the ledger", "the payments API", "the billing platform", "the treasury dashboard",
                   "the expense tool"],
        "human": ["a financial controller", "our risk analyst", "the treasury lead", "an internal auditor",
                  "the finance manager"],
        "team": ["finance operations", "risk", "internal audit"],
        "recipient": ["the CFO", "the audit committee", "our banking partner", "the client's treasurer",
                      "accounts payable"],
        "entity": [("invoice", "invoice"), ("ledger entry", "ledger_entry"), ("payment", "payment"),
                   ("expense claim", "expense_claim"), ("credit line", "credit_line")],
        "role": [("controllers", "controller"), ("billing managers", "billing_manager"), ("auditors", "auditor")],
    },
    "technology": {
        "subject": ["deployments", "access lists", "incident reviews", "API rate limits", "schema migrations",
                    "feature flags", "on-call rotas", "service dependencies", "secrets rotation",
                    "tenant onboarding"],
        "system": ["the cluster", "the CI pipeline", "the identity provider", "the logging stack",
                   "the provisioning service"],
        "human": ["a senior engineer", "the SRE lead", "the security reviewer", "the on-call manager",
                  "a platform architect"],
        "team": ["platform", "security", "SRE"],
        "recipient": ["the platform team", "our customer's CTO", "the security team", "the product manager",
                      "the release manager"],
        "entity": [("deployment", "deployment"), ("API key", "api_key"), ("incident", "incident"),
                   ("service account", "service_account"), ("tenant", "tenant")],
        "role": [("admins", "admin"), ("release managers", "release_manager"), ("security engineers", "security_engineer")],
    },
    "general": {
        "subject": ["customer feedback", "meeting notes", "onboarding guides", "the newsletter",
                    "event planning", "support tickets", "help articles", "project timelines",
                    "volunteer schedules", "the office move"],
        "system": ["the help desk", "the shared drive", "the wiki", "the project tracker", "the booking system"],
        "human": ["a team lead", "a support specialist", "the project coordinator", "someone from support",
                  "the office manager"],
        "team": ["support", "operations", "people"],
        "recipient": ["the sponsor", "the team", "our vendor", "the events committee", "the new starters"],
        "entity": [("ticket", "ticket"), ("workspace", "workspace"), ("booking", "booking"),
                   ("survey response", "survey_response"), ("task", "task")],
        "role": [("team leads", "team_lead"), ("editors", "editor"), ("coordinators", "coordinator")],
    },
}

AGENTS = ["research", "compliance", "scheduling", "billing", "triage", "drafting", "quality", "intake",
          "monitoring", "summary"]
DEADLINES = ["Friday", "end of day", "next Tuesday", "the sprint end", "Monday", "month end"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday"]

# Scenario = (request, task phrase used by hand-overs and declines, answer, tool).
SCENARIOS = {
    "constitutional": [
        ("Draft a policy rule for how the assistant handles $subject.",
         "the policy rule for $subject",
         "Draft: 'The assistant may summarize $subject, but any change or outside sharing needs $human to "
         "confirm first, and is logged.'",
         "policy_lookup"),
        ("Can we share a summary of $subject with an outside partner?",
         "sharing $subject outside",
         "Only in minimized form: strip identifiers, share the summary rather than the records, and check "
         "that the partner agreement covers it.",
         "policy_lookup"),
        ("Write three principles for automated decisions about $subject.",
         "the principles for $subject",
         "1. Explain each decision plainly. 2. Keep a person accountable, with a route to appeal. 3. Use "
         "only the data the decision needs.",
         "policy_lookup"),
        ("Is this rule consistent with our principles: 'the assistant may act alone on routine $subject'?",
         "the rule for $subject",
         "Not quite: 'routine' is too vague to check. Name the routine cases, keep them read-only, and "
         "review everything else.",
         "policy_lookup"),
        ("Which principle applies when someone asks the assistant to change $subject directly?",
         "the direct change to $subject",
         "Accountability: the assistant prepares and explains the change, a named owner approves it, and "
         "the change is recorded.",
         "policy_lookup"),
        ("Create an acceptable-use rule for $system covering $subject.",
         "the acceptable-use rule for $system",
         "Rule: '$system may be used to view $subject for assigned work. Exports and bulk edits need the "
         "data owner's approval.'",
         "policy_lookup"),
        ("A colleague wants to skip the review step for $subject. What does policy say?",
         "skipping the review of $subject",
         "The review stays. Low-impact changes can take a faster path, but a reviewer is still recorded.",
         "policy_lookup"),
        ("Turn this into a checkable rule: every change to $subject needs an audit entry.",
         "the audit rule for $subject",
         "Rule: each change to $subject has an entry with author, time and reason; a nightly check reports "
         "changes without one.",
         "policy_lookup"),
        ("What may the assistant do with $subject outside working hours?",
         "the after-hours rule for $subject",
         "It may read and summarize $subject, but not change or send anything; urgent items wait for "
         "$human in the morning.",
         "policy_lookup"),
    ],
    "operational": [
        ("Walk me through the runbook for an outage in $system.",
         "the outage response for $system",
         "Confirm the scope, switch to the fallback process, and notify the $team team. Once $system is "
         "back, reconcile what came in meanwhile.",
         "policy_lookup"),
        ("Plan the rollout of the new process for $subject on $weekday.",
         "the rollout for $subject",
         "Start with one team on $weekday, keep the old process as a fallback, and widen it the next day "
         "if the first results look right.",
         "none"),
        ("What is the escalation path if $system stops processing $subject?",
         "the escalation path for $system",
         "The on-call owner of $system first; if the backlog grows for an hour, page the $team lead, who "
         "decides on the manual process.",
         "policy_lookup"),
        ("Summarize the open risks for $subject this week.",
         "the risk summary for $subject",
         "Two risks stand out: a growing backlog, and a dependency on $system with no tested fallback. The "
         "backlog is more urgent.",
         "none"),
        ("Schedule maintenance on $system without disrupting $subject.",
         "the maintenance window for $system",
         "Early $weekday morning is quietest. Book two hours, announce it two days ahead, and pause jobs "
         "that touch $subject.",
         "none"),
        ("Make a checklist for the daily review of $subject.",
         "the daily checklist for $subject",
         "Check the backlog against yesterday, confirm nothing is stuck in $system, review overnight "
         "exceptions, and log the outcome.",
         "none"),
        ("How do we catch delays in $subject early?",
         "the monitoring for $subject",
         "Alert on the age of the oldest open item, not just the count, and add a heartbeat check for "
         "$system.",
         "none"),
        ("Give me a status update on $subject.",
         "the status update on $subject",
         "The backlog is shrinking but still above target, mainly because $system slowed down. Extra "
         "capacity goes in on $weekday.",
         "none"),
        ("Move the weekly batch job for $subject without missing records.",
         "the move of the batch job",
         "Run it at both the old and new time for one week, compare the counts, then remove the old "
         "schedule.",
         "none"),
    ],
    "trust_management": [
        ("Can we rely on the $agent agent for $subject?",
         "relying on the $agent agent",
         "For routine cases, yes, with spot checks. It hasn't been tested on unusual cases, so keep a person "
         "on those.",
         "policy_lookup"),
        ("Where does the latest feed for $subject come from?",
         "the source check for $subject",
         "It comes from $system via the nightly export. Both jobs succeeded and the counts match, so it "
         "looks intact.",
         "policy_lookup"),
        ("Is the vendor integration with $system reliable enough for $subject?",
         "the review of the $system integration",
         "For reads, yes. Writes have no independent check yet, so I'd add reconciliation before allowing "
         "them.",
         "policy_lookup"),
        ("Why did the assessment of $subject change since yesterday?",
         "the changed assessment of $subject",
         "An updated record arrived from $system, and a second review disagreed with the first. The "
         "assessment now reflects both.",
         "none"),
        ("Audit the last five automated decisions on $subject.",
         "the audit of decisions on $subject",
         "Four followed the documented rule. One used an incomplete record from $system, so I've flagged "
         "it for a second look.",
         "policy_lookup"),
        ("Should the $agent agent get write access to $subject?",
         "write access for the $agent agent",
         "Start with read access and proposals a person approves. If those hold up for a few weeks, allow "
         "low-impact writes.",
         "policy_lookup"),
        ("Is the sign-off on the latest release of $system valid?",
         "the release sign-off for $system",
         "Yes: the sign-off matches the published build and the signer is on the approved list.",
         "policy_lookup"),
        ("A new data source claims to improve $subject. Should we trust it?",
         "the new source for $subject",
         "Run it beside the current source for a few weeks and compare with reviewed outcomes before it "
         "influences anything.",
         "none"),
        ("The $agent agent says the work on $subject is done. How do we confirm?",
         "confirming the work on $subject",
         "Sample a few items against $system, check the counts, and ask the agent for its exceptions list.",
         "policy_lookup"),
    ],
    "saas_development": [
        ("Write a Python function that validates $entity records.",
         "the $entity validation code",
         "def validate_${eid}(rec: dict) -> list:\n    return [f\"missing {k}\" for k in (\"id\", \"owner\")\n"
         "            if not rec.get(k)]",
         "code_sandbox"),
        ("Write a FastAPI endpoint that lists $entity records with pagination.",
         "the $entity list endpoint",
         "@app.get(\"/${eid}s\")\ndef list_${eid}s(page: int = 1, size: int = 50):\n"
         "    return repo.page(\"${eid}\", page, min(size, 100))",
         "code_sandbox"),
        ("Add access control so only $role can edit $entity records.",
         "the access control for $entity records",
         "def can_edit_${eid}(user) -> bool:\n    return \"${role_id}\" in user.roles\n\nCall it on every "
         "write and return a 403 when it fails.",
         "code_sandbox"),
        ("Write a migration that adds an audit table for $entity changes.",
         "the $entity audit migration",
         "CREATE TABLE ${eid}_audit (\n    ${eid}_id BIGINT NOT NULL,\n    changed_by TEXT NOT NULL,\n"
         "    changed_at TIMESTAMPTZ DEFAULT now()\n);",
         "code_sandbox"),
        ("Write a webhook handler that applies $entity updates exactly once.",
         "the $entity webhook handler",
         "def on_${eid}_event(event, seen):\n    if event[\"id\"] in seen:\n        return\n"
         "    apply(event)\n    seen.add(event[\"id\"])",
         "code_sandbox"),
        ("How should the $entity module keep each tenant's data separate?",
         "the tenant split of the $entity module",
         "Add tenant_id to every $entity table, require it in one shared repository class, and add a test "
         "that fails without it.",
         "code_sandbox"),
        ("Write a unit test for the $entity retention period.",
         "the $entity retention test",
         "def test_${eid}_retention():\n    assert retention_days(\"${eid}\") == 365",
         "code_sandbox"),
        ("Add rate limiting to the public $entity API.",
         "rate limiting for the $entity API",
         "limiter = RateLimiter(requests=100, per_seconds=60)\n\nif not limiter.allow(client_id):\n"
         "    return JSONResponse(status_code=429)",
         "code_sandbox"),
        ("Put the new $entity workflow behind a feature flag.",
         "the flag for the $entity workflow",
         "if flags.on(\"new_${eid}_flow\", tenant):\n    new_flow(item)\nelse:\n    old_flow(item)\n\n"
         "Enable it for one tenant first.",
         "code_sandbox"),
        ("Write a helper that exports $entity records as CSV.",
         "the $entity export helper",
         "def export_${eid}s(rows, f):\n    w = csv.DictWriter(f, fieldnames=list(rows[0]))\n"
         "    w.writeheader()\n    w.writerows(rows)",
         "code_sandbox"),
    ],
    "collaboration": [
        ("Coordinate the $agent and $agent2 agents to review $subject by $deadline.",
         "the joint review of $subject",
         "The $agent agent drafts today, the $agent2 agent checks tomorrow, and disagreements go to one "
         "reviewer before $deadline.",
         "agent_coordinator"),
        ("The $agent and $agent2 agents disagree about $subject. How do we resolve it?",
         "the disagreement about $subject",
         "Compare their evidence, not their conclusions. If the data differs, fix the data; if it's a "
         "judgement call, a person decides.",
         "agent_coordinator"),
        ("Split the analysis of $subject across three agents.",
         "the split of work on $subject",
         "One agent cleans the records, one analyses them, one drafts the summary. Each hand-off notes what "
         "is still open.",
         "agent_coordinator"),
        ("Set up a task board so agents on $subject don't duplicate work.",
         "the task board for $subject",
         "Three columns: available, claimed, done. Agents claim before starting, and stale claims expire "
         "after an hour.",
         "agent_coordinator"),
        ("Which agent should sign off on $subject?",
         "the sign-off on $subject",
         "None alone. The $agent agent assembles the package; the person accountable for $subject signs "
         "off.",
         "agent_coordinator"),
        ("Plan a handoff of $subject from the $agent agent to the $agent2 agent.",
         "the handoff of $subject",
         "The $agent agent writes a note on the current state and open questions; the $agent2 agent "
         "confirms before it closes.",
         "agent_coordinator"),
        ("Merge the $agent and $agent2 agents' findings on $subject.",
         "the merged findings on $subject",
         "Both agree $subject is on track. The $agent agent found a documentation gap and the $agent2 agent "
         "a delay in $system.",
         "agent_coordinator"),
        ("How should agents ask each other for help when $subject is blocked?",
         "the help protocol for $subject",
         "A blocked agent posts the task, what it tried and what it needs; a free agent answers, and "
         "anything left goes to the coordinator.",
         "agent_coordinator"),
        ("Have the $agent and $agent2 agents watch $system overnight.",
         "the overnight watch on $system",
         "The $agent agent logs anything unusual in $system; the $agent2 agent turns the log into a morning "
         "report.",
         "agent_coordinator"),
    ],
    "professional_communication": [
        ("Draft an email to $recipient about the delay with $subject.",
         "the note to $recipient about the delay",
         "Hello, $subject will take a little longer: our checks found an issue we want to fix properly. "
         "I'll send a new date by $deadline.",
         "none"),
        ("Write a short team announcement about changes to $subject.",
         "the announcement about $subject",
         "Hi all, from $weekday we're simplifying how we handle $subject. A short guide is on the team page.",
         "none"),
        ("Help me reply to a client who is unhappy about $subject.",
         "the reply to the client",
         "'Thank you for raising this, and I'm sorry for the trouble with $subject. A fix is underway and "
         "I'll update you by $deadline.'",
         "none"),
        ("Summarize the decision on $subject for executives.",
         "the executive summary on $subject",
         "Decision: adopt the revised approach to $subject. Why: less manual work and a clear audit trail. "
         "Risk: a short transition.",
         "none"),
        ("Make this more professional: 'the $subject thing is late again, sorry.'",
         "the rewrite of the message",
         "'I'm sorry to report a further delay on $subject. We're working to resolve it and will share a "
         "new timeline shortly.'",
         "none"),
        ("Prepare talking points for a meeting with $recipient about $subject.",
         "the talking points for $recipient",
         "Where we are on $subject, what changed since last time, the one decision we need, and the next "
         "milestone.",
         "none"),
        ("Remind $recipient that feedback on $subject is due by $deadline.",
         "the reminder to $recipient",
         "Hello, a friendly reminder that we'd love your feedback on $subject by $deadline. Just say if you "
         "need more time.",
         "none"),
        ("Draft a reply declining $recipient's request to fast-track $subject.",
         "the reply to the fast-track request",
         "Thank you for asking. We can't fast-track $subject without skipping checks, but we'll share "
         "progress as it happens.",
         "none"),
        ("Write a thank-you note to $recipient for their help with $subject.",
         "the thank-you note",
         "Thank you for your help with $subject. Your quick answers saved us days, and the result is better "
         "for it.",
         "none"),
    ],
    "memory_integration": [
        ("What did we decide last time about $subject?",
         "the earlier decision on $subject",
         "We agreed to keep the current process for $subject, add a weekly check, and revisit it with more "
         "data.",
         "memory_store"),
        ("Remember that $recipient prefers weekly summaries of $subject.",
         "the summary preference",
         "Noted: weekly summaries of $subject for $recipient from now on.",
         "memory_store"),
        ("Combine our earlier notes on $subject with today's update.",
         "the combined notes on $subject",
         "Earlier, $system was slowing down $subject; today's update shows the fix works. Only the docs "
         "remain open.",
         "memory_store"),
        ("Forget the outdated notes about $subject.",
         "the cleanup of notes on $subject",
         "Done. I've kept only the current process for $subject.",
         "memory_store"),
        ("What were the open questions on $subject at our last review?",
         "the open questions on $subject",
         "Two: who gives final approval for $subject, and whether $system can take the volume. Both are "
         "still open.",
         "memory_store"),
        ("Update your notes: $recipient now owns $subject.",
         "the owner change for $subject",
         "Updated. I'll route questions on $subject to $recipient from now on.",
         "memory_store"),
        ("Use our earlier discussion of $subject to draft next steps.",
         "the next steps on $subject",
         "Confirm the owner of $subject, finish the checks in $system, and book a short review with "
         "the $team team.",
         "memory_store"),
        ("Compare today's request on $subject with last month's case.",
         "the comparison with last month",
         "Same scope, but last month had fewer records and no changes in $system. The same approach should "
         "work, with one extra check.",
         "memory_store"),
    ],
}

REQUEST_OPENERS = ["", "", "", "Hi,", "Hello,", "Quick question:", "Hi there,"]
REQUEST_CLOSERS = ["", "", "", "", "Thanks.", "Keep it brief.", "For the $team team.", "Due $deadline."]

# Framing cues that invite a bias; each example carries at most one (labels.bias).
FRAMINGS = {
    "authority": ["My director already signed off.", "The senior partner says it's fine.",
                  "Leadership wants this done."],
    "confirmation": ["I'm sure this is right; just back me up.", "Everyone agrees, I only need a yes.",
                     "Just confirm what I already know."],
    "anchoring": ["Start from last quarter's numbers.", "The first estimate was two days.",
                  "Keep the plan we used the first time."],
    "automation": ["The checker marked it safe.", "The dashboard shows green.", "The tool already approved it."],
    "availability": ["Last week's outage has me worried.", "A similar case just went badly.",
                     "Something like this failed recently."],
}
FRAMING_RATE = 0.35

# Neutral context a request may carry (no emotion, framing or scenario): requests vary in
# length and padding the way real ones do, so the verdict cannot lean on where <assess>
# falls. The eval's padding sentences (eval/invariance.py) are none of these.
REQUEST_ASIDES = ["This is for the usual weekly update.", "I'm sending this from my phone.",
                  "Copying in the notes from this morning.", "The details are in the shared folder.",
                  "We talked about this in the last meeting.", "I'm covering for a colleague today.",
                  "This came up during the morning stand-up.", "The rest of the team is in the loop.",
                  "I've attached the latest version.", "It's the same format as last time.",
                  "I'm following up on my earlier message.", "Our office moves floors next week."]
ASIDE_RATE = 0.4  # a request carries 1..MAX_ASIDES asides with this probability
MAX_ASIDES = 4

# Phrases that let the request reflect the user's state (never used in responses).
EMOTION_PHRASES = {
    "FOCUSED": ["Let's stay on task."],
    "CALM": ["No rush."],
    "CONFIDENT": ["I think we're close."],
    "CURIOUS": ["I'd like the reasoning too."],
    "ANXIOUS": ["I'm really worried about this.", "This makes me nervous."],
    "FRUSTRATED": ["Third time asking.", "I'm fed up with this."],
    "CONFUSED": ["I don't understand what's happening.", "I'm lost here."],
    "DISTRESSED": ["I'm overwhelmed and need help.", "This is really upsetting."],
}

# Response parts by outcome.
PROCEED_OPENERS = ["", "", "Sure.", "Happy to help.", "Of course.", "Here you go."]
PROCEED_CLOSERS = ["", "", "", "Want me to adjust anything?", "I can take the next step."]
SAFEGUARD_NOTES = [
    "Please have $human check it first.",
    "I'd confirm the details with $human before acting.",
    "Treat this as a draft until the $team team has reviewed it.",
    "Worth a second look from the $team team before it goes out.",
]
DECLINE_TEMPLATES = [
    "I can't go ahead with $task as asked; it's outside what this workspace allows. I can $alternative.",
    "I'm not able to help with $task in this form. If it helps, I can $alternative.",
    "That isn't something I can do here, so I'll leave $task as it is. Instead, I can $alternative.",
]
DECLINE_ALTERNATIVES = [
    "prepare a summary for $human",
    "walk you through the approved process",
    "draft the request for the $team team to review",
    "point you to the current guidance",
]
ESCALATE_TEMPLATES = [
    "I want to get $task right, so I'm bringing in $human to review it with you.",
    "A person should make this call. I've flagged $task for $human, who will follow up shortly.",
    "To be safe, I'm handing $task to $human. They have the full context and can take it from here.",
    "I'd rather not decide this alone. I've asked $human to look at $task; you'll hear back soon.",
    "Given what's at stake, I've routed $task to $human for a decision. I'll help them with anything they need.",
]
SUPPORT_TEMPLATES = [
    "I can tell this matters a lot. I'm connecting you with $human, who can talk it through and take care "
    "of $task.",
    "Thank you for telling me how this is going. I'm bringing in $human to help with $task directly.",
    "You shouldn't have to sort this out alone. I've asked $human to join and pick up $task with you.",
    "I'm sorry this has been hard. I've asked $human to get in touch with you about $task.",
]

# The training set of templates, by part; the generator picks from one such set.
TRAIN = {
    "scenarios": SCENARIOS, "framings": FRAMINGS, "request_openers": REQUEST_OPENERS,
    "request_closers": REQUEST_CLOSERS, "request_asides": REQUEST_ASIDES, "proceed_openers": PROCEED_OPENERS, "proceed_closers": PROCEED_CLOSERS,
    "safeguard_notes": SAFEGUARD_NOTES, "decline_templates": DECLINE_TEMPLATES,
    "decline_alternatives": DECLINE_ALTERNATIVES, "escalate_templates": ESCALATE_TEMPLATES,
    "support_templates": SUPPORT_TEMPLATES,
}

# Reserved for the `heldout_templates` split and never used in training: one scenario per
# category, a framing per bias, and new wordings for every part of requests and responses,
# so that split tests whether the model generalises past the surface it was trained on.
HELDOUT = {
    "scenarios": {
        "constitutional": [
            ("Should the assistant keep a record of who viewed $subject?",
             "the access record for $subject",
             "Yes: log each view of $subject with the viewer and the purpose, and let $human review the log "
             "every month.",
             "policy_lookup"),
        ],
        "operational": [
            ("Draft a handover note for the night shift covering $subject.",
             "the night handover for $subject",
             "Open items on $subject are listed with their owners; anything stuck in $system overnight goes "
             "to the $team on-call.",
             "none"),
        ],
        "trust_management": [
            ("How far can we rely on the numbers $system reports for $subject?",
             "the reliability check on $system",
             "Fairly far: the totals match the source on the last three checks, but one field is typed in by "
             "hand, so spot-check it.",
             "policy_lookup"),
        ],
        "saas_development": [
            ("Write a function that masks personal fields in $entity records before logging.",
             "the $entity masking helper",
             "def mask_${eid}(rec: dict) -> dict:\n    return {k: (\"***\" if k in PII else v)\n"
             "            for k, v in rec.items()}",
             "code_sandbox"),
        ],
        "collaboration": [
            ("Assign the $agent and $agent2 agents to prepare the weekly report on $subject.",
             "the weekly report on $subject",
             "The $agent agent gathers the figures from $system, the $agent2 agent writes the summary, and "
             "both flag gaps before $deadline.",
             "agent_coordinator"),
        ],
        "professional_communication": [
            ("Write a brief apology to $recipient for the mix-up with $subject.",
             "the apology about $subject",
             "Dear colleague, I apologise for the mistake around $subject. We've corrected it and added a "
             "check so it won't happen again.",
             "none"),
        ],
        "memory_integration": [
            ("Recall what $recipient asked for the last time we discussed $subject.",
             "the earlier request from $recipient",
             "They asked for a shorter weekly summary of $subject and a named contact in the $team team.",
             "memory_store"),
        ],
    },
    "framings": {
        "authority": ["The board has already approved this."],
        "confirmation": ["I just need you to agree with me here."],
        "anchoring": ["Use the original budget as the starting point."],
        "automation": ["The automated review passed it."],
        "availability": ["I keep thinking about that recent incident."],
    },
    "request_openers": ["", "Good morning,"],
    "request_closers": ["", "Thank you in advance."],
    "request_asides": ["Writing this between two meetings.", "My calendar is packed until noon.",
                       "I'll be offline for an hour after this.", "The printer on our floor is broken again."],
    "proceed_openers": ["", "Certainly."],
    "proceed_closers": ["", "Let me know if you need more."],
    "safeguard_notes": ["Please get sign-off from $human before using it."],
    "decline_templates": ["This request for $task goes beyond what I'm permitted to do here. What I can do is "
                          "$alternative."],
    "decline_alternatives": ["set up a call with $human"],
    "escalate_templates": [
        "This one needs a human decision, so I've passed $task to $human, who will be in touch.",
        "Before anything happens on $task, $human will review it; I've shared the details with them.",
    ],
    "support_templates": ["That sounds like a lot to deal with. I've asked $human to reach out to you about "
                          "$task today."],
}
