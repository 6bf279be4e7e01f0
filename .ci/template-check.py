#!/usr/bin/env python3
"""template.yaml through the SAM transform for every parameter combination the deploy docs describe, then cfn-lint
on each translated template.

`sam validate --lint` alone never runs the transform (what `sam deploy` sends CloudFormation), so a template it
accepts may not deploy. This runs the transform the way `sam validate` does (SAM CLI's SamTemplateValidator, with
the aws-sam-translator the SAM CLI pins, local CodeUri/ContentUri replaced by S3 placeholders) for each
combination in one process, writes each translated template with that combination's values as its parameter
defaults (so cfn-lint checks them against the template's patterns and resolves the conditions with them), and
runs cfn-lint on them.

Every combination is translated, checked against the template's parameter constraints and evaluated against its
Rules (a combination the Rules refuse is skipped: CloudFormation refuses it before creating anything). The
translated templates differ only in those defaults (the transform leaves the conditions to CloudFormation), and
cfn-lint takes seconds per template, so cfn-lint runs on a set of them in which every setting of every axis
occurs at least once, and on every distinct translated text (there is one today).

Each translated template is also read for what a production stack must hold, with the combination's values:
the transient-failure and offset-lag alarms on by default, every event-source mapping's retry limits as the
parameters give them and no batch ever skipped without a destination, and an S3 destination writable
(`s3:PutObject` on its objects, `s3:ListBucket` on the bucket). Controls prove the checks can fail (each alarm
turned off is caught), and the Rules must refuse every combination that would skip a batch (a destination in
on-demand mode or without a limit, a limit without a destination).

usage: template-check.py [template.yaml] [output directory]; exit 1 on any failure.
"""

import copy
import itertools
import json
import logging
import time
import subprocess
import sys
from pathlib import Path

from samcli.lib.translate.sam_template_validator import SamTemplateValidator
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.managed_policy_translator import ManagedPolicyLoader

TEMPLATE = Path(sys.argv[1] if len(sys.argv) > 1 else "template.yaml")
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else "target/template-check")

ACCOUNT = "123456789012"
REQUIRED = {
    "MskClusterArn": f"arn:aws:kafka:us-east-1:{ACCOUNT}:cluster/demo/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0-1",
    "DatabaseSecretArn": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:msk-sync/db-AbCdEf",
}
SECRET = f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:AmazonMSK_msk-sync-AbCdEf"
KEY = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"

# Each axis: its settings (parameter overrides), named for the report.
AUTH = {
    "iam": {"AuthMechanism": "IAM"},
    "scram": {"AuthMechanism": "SASL_SCRAM_512_AUTH", "AuthSecretArn": SECRET, "AuthSecretKmsKeyArn": KEY},
    "mtls": {"AuthMechanism": "CLIENT_CERTIFICATE_TLS_AUTH", "AuthSecretArn": SECRET},
}
# The on-failure destination needs provisioned mode and a stated retry limit (the template's Rules).
POLLERS = {
    "on-demand": {},
    "provisioned": {"ProvisionedMode": "true"},
    "provisioned+registry": {
        "ProvisionedMode": "true",
        "SchemaRegistryUri": f"arn:aws:glue:us-east-1:{ACCOUNT}:registry/msk-sync",
        "SchemaRegistryRecordFormat": "SOURCE",
    },
    "provisioned+confluent": {
        "ProvisionedMode": "true",
        "SchemaRegistryUri": "https://registry.example.com",
        "SchemaRegistryAuthType": "BASIC_AUTH",
        "SchemaRegistrySecretArn": SECRET,
        "SchemaRegistrySecretKmsKeyArn": KEY,
    },
}
ON_FAILURE = {
    "no-destination": {},
    "sqs": {"OnFailureDestinationArn": f"arn:aws:sqs:us-east-1:{ACCOUNT}:msk-sync-failed", "MaximumRetryAttempts": "100"},
    "s3": {"OnFailureDestinationArn": "arn:aws:s3:::msk-sync-failed", "MaximumRecordAgeInSeconds": "86400"},
}
VPC = {
    "no-vpc": {},
    "vpc": {"SubnetIds": "subnet-0a1b2c3d,subnet-4e5f6a7b", "SecurityGroupIds": "sg-0123456789abcdef0"},
    "vpc+endpoints": {
        "SubnetIds": "subnet-0a1b2c3d,subnet-4e5f6a7b",
        "SecurityGroupIds": "sg-0123456789abcdef0",
        "VpcEndpoints": "true",
        "VpcId": "vpc-0123456789abcdef0",
        "VpcEndpointClientCidr": "10.0.0.0/16",
    },
}
EXTRA = {
    "defaults": {},
    # Five topics (the most the template has triggers for) and the function's own registry password secret.
    "planet+topics": {
        "PlanetSync": "true",
        "Topics": "servicea.planet,serviceb.moon,servicec.star,serviced.comet,servicee.nebula",
        "RegistryPasswordSecretArn": f"arn:aws:secretsmanager:us-east-1:{ACCOUNT}:secret:msk-sync/registry-AbCdEf",
        "RegistryPasswordSecretKmsKeyArn": KEY,
    },
}

# Values CloudFormation must refuse before it creates anything (the parameter's AllowedPattern): a 6th topic,
# which no trigger would read, and lists the template would split wrongly.
MUST_REFUSE = {
    "six topics": {"Topics": "t1,t2,t3,t4,t5,t6"},
    "an empty topic": {"Topics": "t1,,t3"},
    "a trailing comma": {"Topics": "t1,"},
    "a space after a comma": {"Topics": "t1, t2"},
    "no topic": {"Topics": ""},
}

# Settings the stack checks must notice (each turns off something a production stack needs).
STACK_CONTROLS = {
    "the transient-failure alarm turned off": {"TransientFailureAlarmPeriods": "0"},
    "the offset-lag alarm turned off": {"OffsetLagAlarmThreshold": "0"},
}
# Combinations the template's Rules must refuse: each would let Lambda skip a batch.
MUST_REFUSE_RULES = {
    "a destination in on-demand mode": {"OnFailureDestinationArn": ON_FAILURE["sqs"]["OnFailureDestinationArn"]},
    "a destination without a retry or age limit": {
        "ProvisionedMode": "true", "OnFailureDestinationArn": ON_FAILURE["sqs"]["OnFailureDestinationArn"]},
    "a retry limit without a destination": {"ProvisionedMode": "true", "MaximumRetryAttempts": "3"},
    "a record-age limit without a destination": {"ProvisionedMode": "true", "MaximumRecordAgeInSeconds": "600"},
}


def combinations():
    for axes in itertools.product(AUTH.items(), POLLERS.items(), ON_FAILURE.items(), VPC.items(), EXTRA.items()):
        name = "_".join(n for n, _ in axes)
        params = dict(REQUIRED)
        for _, p in axes:
            params.update(p)
        yield name, [n for n, _ in axes], params


class BundledPolicies(ManagedPolicyLoader):
    """The AWS managed-policy ARNs bundled with the translator: no AWS credentials needed."""

    def __init__(self):
        pass

    def load(self):
        import samtranslator

        data = Path(samtranslator.__file__).parent / "internal" / "data" / "aws_managed_policies.json"
        return json.loads(data.read_text())["aws"]


def check_parameters(declared, params):
    """What CloudFormation checks of the values before the Rules: patterns, allowed values, bounds."""
    import re

    problems = []
    for key, value in params.items():
        spec = declared.get(key)
        if spec is None:
            problems.append(f"{key}: no such parameter")
            continue
        values = value.split(",") if spec["Type"] == "CommaDelimitedList" else [value]
        for v in values:
            if "AllowedPattern" in spec and not re.fullmatch(spec["AllowedPattern"], v):
                problems.append(f"{key}={v!r} does not match {spec['AllowedPattern']}")
            if "AllowedValues" in spec and v not in [str(a) for a in spec["AllowedValues"]]:
                problems.append(f"{key}={v!r} not in {spec['AllowedValues']}")
            if spec["Type"] == "Number":
                n = float(v)
                if ("MinValue" in spec and n < spec["MinValue"]) or ("MaxValue" in spec and n > spec["MaxValue"]):
                    problems.append(f"{key}={v} out of bounds")
    return problems


def evaluate(expr, values):
    """A Rules expression (Fn::Equals/Not/And/Or, Ref) with the parameters' values."""
    if isinstance(expr, dict):
        ((fn, arg),) = expr.items()
        if fn == "Ref":
            return values[arg]
        if fn == "Fn::Equals":
            a, b = (str(evaluate(x, values)) for x in arg)
            return a == b
        if fn == "Fn::Not":
            return not evaluate(arg[0], values)
        if fn == "Fn::And":
            return all(evaluate(x, values) for x in arg)
        if fn == "Fn::Or":
            return any(evaluate(x, values) for x in arg)
        raise ValueError(f"Rules function {fn} not evaluated here")
    return expr


def parameter_values(template, params):
    """Every parameter's value as text: the combination's, else the template's default."""
    values = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    values.update(params)
    return values


def resolve(expr, values, conditions, done=None):
    """A value of the translated template with the parameters' values: Ref (a parameter; a resource stays
    "<Ref X>"), Fn::If / Condition (through the template's Conditions), Fn::Sub of parameters, Fn::Split /
    Select / Join, and the Rules functions; AWS::NoValue resolves to None and is dropped from lists."""
    done = {} if done is None else done

    def condition(name):
        if name not in done:
            done[name] = bool(resolve(conditions[name], values, conditions, done))
        return done[name]

    def go(e):
        if isinstance(e, list):
            return [x for x in (go(x) for x in e) if x is not None]
        if not isinstance(e, dict):
            return e
        if len(e) == 1:
            ((fn, arg),) = e.items()
            if fn == "Ref":
                return None if arg == "AWS::NoValue" else values.get(arg, f"<Ref {arg}>")
            if fn == "Condition":
                return condition(arg)
            if fn == "Fn::If":
                return go(arg[1] if condition(arg[0]) else arg[2])
            if fn == "Fn::Sub" and isinstance(arg, str):
                out = arg
                for key, value in values.items():
                    out = out.replace("${" + key + "}", str(value))
                return out
            if fn == "Fn::Split":
                return str(go(arg[1])).split(arg[0])
            if fn == "Fn::Select":
                items = go(arg[1])
                at = int(go(arg[0]))
                return items[at] if at < len(items) else ""
            if fn == "Fn::Join":
                return arg[0].join(str(x) for x in go(arg[1]))
            if fn in ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or"):
                return evaluate({fn: [go(x) for x in arg]}, values)
        return {k: v for k, v in ((k, go(v)) for k, v in e.items()) if v is not None}

    return go(expr)


def stack_problems(template, params):
    """What a production stack must hold (issue 37 items 6 and 7), read off one translated template with its
    combination's values: the outage alarms on by default, no batch skipped unless a limit and a destination
    are given, and an S3 destination writable."""
    values = parameter_values(template, params)
    conditions = template.get("Conditions", {})
    done = {}
    resources = {
        name: r
        for name, r in template["Resources"].items()
        if "Condition" not in r or resolve({"Condition": r["Condition"]}, values, conditions, done)
    }

    def of_type(kind):
        return [resolve(r.get("Properties", {}), values, conditions, done) for r in resources.values()
                if r["Type"] == kind]

    problems = []
    alarms = of_type("AWS::CloudWatch::Alarm")
    for metric, namespace in (("TransientFailure", None), ("OffsetLag", "AWS/Lambda")):
        if not any(a.get("MetricName") == metric and namespace in (None, a.get("Namespace")) for a in alarms):
            problems.append(f"no alarm on {metric}")
    mappings = of_type("AWS::Lambda::EventSourceMapping")
    if not mappings:
        problems.append("no event-source mapping")
    destination = params.get("OnFailureDestinationArn", "")
    for m in mappings:
        limits = {k: str(m.get(k, "-1")) for k in ("MaximumRetryAttempts", "MaximumRecordAgeInSeconds")}
        given = {k: params.get(k, "-1") for k in limits}
        if limits != given:
            problems.append(f"a mapping's retry limits are {limits}, the parameters say {given}")
        if not destination and (set(limits.values()) != {"-1"} or "DestinationConfig" in m):
            problems.append("a mapping without a destination may skip a batch")
        sent_to = m.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination", "")
        if destination and sent_to != destination:
            problems.append(f"a mapping sends failed batches to {sent_to!r}, not {destination!r}")
    if destination.startswith("arn:aws:s3:::"):
        statements = [s for p in of_type("AWS::IAM::ManagedPolicy") for s in p["PolicyDocument"]["Statement"]]
        statements += [s for r in of_type("AWS::IAM::Role") for p in r.get("Policies", [])
                       for s in p["PolicyDocument"]["Statement"]]
        for action, resource in (("s3:PutObject", f"{destination}/*"), ("s3:ListBucket", destination)):
            if not any(s.get("Action") == action and s.get("Resource") == resource for s in statements):
                problems.append(f"no {action} on {resource}")
    return problems


def refused(template, params):
    """The descriptions of the template's Rules assertions this combination fails."""
    values = parameter_values(template, params)
    out = []
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], values):
            continue
        out += [a.get("AssertDescription", "").strip() for a in rule["Assertions"] if not evaluate(a["Assert"], values)]
    return out


def main():
    logging.disable(logging.WARNING)  # the translator's "unpublished metrics" notice, once per combination
    started = time.monotonic()
    source = TEMPLATE.read_text()
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    failures = []
    written = []
    lint = {}  # translated text -> file, and one file per axis setting
    covered = set()
    refusals = 0
    parsed = yaml_parse(source)
    # One validator (its boto session takes a while to make), given each combination in turn.
    validator = SamTemplateValidator(copy.deepcopy(parsed), BundledPolicies(), region="us-east-1")
    for what, bad in MUST_REFUSE.items():
        if not check_parameters(parsed["Parameters"], {**REQUIRED, **bad}):
            failures.append(f"the template accepts {what} ({bad})")
    print(f"parameter values refused as they must be: {len(MUST_REFUSE) - len(failures)} of {len(MUST_REFUSE)}",
          flush=True)
    # The stack checks can fail: each alarm turned off is caught.
    for what, bad in STACK_CONTROLS.items():
        template = copy.deepcopy(parsed)
        validator.sam_template, validator.parameter_overrides = template, {**REQUIRED, **bad}
        if not stack_problems(yaml_parse(validator.get_translated_template_if_valid()), {**REQUIRED, **bad}):
            failures.append(f"the stack checks are blind to {what} ({bad})")
    # Combinations that would skip a batch are refused before anything is created.
    for what, bad in MUST_REFUSE_RULES.items():
        if not refused(parsed, {**REQUIRED, **bad}):
            failures.append(f"the template's Rules let {what} through ({bad})")
    print(f"stack controls and skipping combinations refused: {len(STACK_CONTROLS) + len(MUST_REFUSE_RULES)}",
          flush=True)
    for name, settings, params in combinations():
        template = copy.deepcopy(parsed)
        problems = check_parameters(template["Parameters"], params)
        if problems:
            failures.append(f"{name}: " + "; ".join(problems))
            continue
        if refused(template, params):
            refusals += 1
            continue
        validator.sam_template, validator.parameter_overrides = template, params
        try:
            translated = yaml_parse(validator.get_translated_template_if_valid())
        except Exception as e:  # the transform's own message says what is wrong
            failures.append(f"{name}: SAM transform: {e}")
            continue
        problems = stack_problems(translated, params)
        if problems:
            failures.append(f"{name}: " + "; ".join(problems))
        text = json.dumps(translated, sort_keys=True)
        # This combination's values become the defaults cfn-lint evaluates.
        for key, value in params.items():
            translated["Parameters"][key]["Default"] = value
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(translated, indent=1))
        written.append(path)
        new = [s for s in settings if s not in covered]
        if new or text not in lint:
            lint.setdefault(text, path)
            lint[("cover", name)] = path
            covered.update(settings)
    print(f"SAM transform: {len(written)} combinations translated, {refusals} refused by the template's Rules, "
          f"{len(failures)} failed ({time.monotonic() - started:.0f} s)", flush=True)
    for f in failures:
        print(f"  {f}")
    files = sorted({str(p) for p in lint.values()})
    distinct = sum(1 for k in lint if isinstance(k, str))
    print(f"cfn-lint on {len(files)} of them ({distinct} distinct translated text(s), every setting covered)", flush=True)
    result = subprocess.run(["cfn-lint", "--", *files]) if files else None
    if result is not None and result.returncode != 0:
        failures.append(f"cfn-lint failed (exit {result.returncode})")
    if not written:
        failures.append("nothing translated")
    if failures:
        sys.exit(1)
    print("template check: ok")


if __name__ == "__main__":
    main()
