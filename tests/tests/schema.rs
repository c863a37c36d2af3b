//! scenarios/scenario.schema.json against the shipped scenarios, with a JSON Schema validator editors
//! also use (Python's jsonschema, Draft 7): every shipped scenario passes, a misspelled key fails. That
//! the shipped schema is the generated one is a unit test (experiment::schema).

use std::process::Command;

use integration_tests::skip;

const CHECK: &str = r#"
import glob, json, sys
import jsonschema, yaml
root = sys.argv[1]
schema = json.load(open(root + "/scenarios/scenario.schema.json"))
jsonschema.Draft7Validator.check_schema(schema)
v = jsonschema.Draft7Validator(schema)
files = sorted(glob.glob(root + "/scenarios/*.yaml"))
bad = 0
for f in files:
    for e in v.iter_errors(yaml.safe_load(open(f))):
        bad += 1
        print("INVALID", f, list(e.path), e.message)
typo = yaml.safe_load("title: t\ntargets: [{name: a, container: web}]\n"
                      "faults: [{name: f, net: {dorp: 5}}]\n")
caught = sum(1 for _ in v.iter_errors(typo))
print(json.dumps({"files": len(files), "invalid": bad, "typo_errors": caught}))
"#;

#[test]
fn every_shipped_scenario_validates_against_the_shipped_schema() {
    const NAME: &str = "every_shipped_scenario_validates_against_the_shipped_schema";
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let have = Command::new("python3")
        .args(["-c", "import jsonschema, yaml"])
        .output();
    if !have.is_ok_and(|o| o.status.success()) {
        return skip(
            NAME,
            "needs python3 with jsonschema and yaml (apt-get install python3-jsonschema python3-yaml)",
        );
    }
    let out = Command::new("python3")
        .args(["-c", CHECK, root])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
    let last: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("result line");
    assert!(last["files"].as_u64().unwrap() >= 5, "{stdout}");
    assert_eq!(last["invalid"], 0, "{stdout}");
    assert!(
        last["typo_errors"].as_u64().unwrap() >= 1,
        "a misspelled key passed: {stdout}"
    );
}
