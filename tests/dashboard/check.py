"""The dashboard in a real browser (Debian's headless Chromium, driven by
Selenium): a service with tokens and demo data; nothing shows before sign-in
and a wrong token is refused; each page loads without a console error and
shows the numbers the API gives for the same question; the lead just scored
is found; the live feed shows a change made while it is open. Screenshots
of every page go to the directory given.

    python tests/dashboard/check.py target/debug/leadscore target/screenshots
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ADMIN = "dashboard-check-admin-0123456789"
VIEWER = "dashboard-check-viewer-0123456789"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def midnight(days_ago):
    now = datetime.now(timezone.utc)
    day = datetime(now.year, now.month, now.day, tzinfo=timezone.utc) - timedelta(days=days_ago)
    return day.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Api:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def __call__(self, method, body):
        request = urllib.request.Request(
            f"{self.base}/leadscore.v1.{method}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def number(text):
    return float(text.replace(",", "").strip())


def main():
    binary, shots = sys.argv[1], pathlib.Path(sys.argv[2])
    shots.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp())
    (work / "tokens").write_text(f"ops admin {ADMIN}\nviewer score,qualify {VIEWER}\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, LEADSCORE_AUTH_TOKENS_FILE=str(work / "tokens"), RUST_LOG="warn")
    log = open(work / "serve.log", "w")
    service = subprocess.Popen(
        [binary, "serve", "--grpc-addr", f"127.0.0.1:{port}", "--metrics-addr", "off"], env=env, stderr=log
    )
    driver = None
    try:
        api = Api(base, ADMIN)
        deadline = time.time() + 30
        while True:
            try:
                api("LeadScoring/ScoreLeads", {"leadIds": ["nobody"]})
                break
            except (urllib.error.URLError, ConnectionError):
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        seeded = subprocess.run(
            [binary, "demo", "seed", "--addr", base, "--leads", "120"],
            env=dict(os.environ, LEADSCORE_TOKEN=ADMIN),
            check=True,
            capture_output=True,
            text=True,
        )
        print(seeded.stdout.strip().splitlines()[0])
        # The lead a new user just scored.
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        api("LeadScoring/UpsertLead", {"lead": {"leadId": "dash-1", "attributes": {"seniority": "vp", "company_size": "1500"}}})
        signals = [{"eventId": f"dash-{i}", "leadId": "dash-1", "type": "webinar_attended", "occurredAt": now} for i in range(3)]
        api("LeadScoring/RecordSignals", {"signals": signals})

        options = Options()
        options.binary_location = "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        wait = WebDriverWait(driver, 15)

        def shown(css):
            return wait.until(lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None))

        def text(css):
            return shown(css).text

        def page_shows(words):
            """Waits for the page to show `words`; says what it shows instead."""
            try:
                wait.until(lambda d: words in d.find_element(By.ID, "page").text)
            except Exception:
                raise AssertionError(f"the page never showed {words!r}; it shows: {driver.find_element(By.ID, 'page').text[:2000]!r}")

        def errors():
            return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]

        # Nothing before sign-in; a wrong token is refused.
        driver.get(f"{base}/dashboard/")
        shown("#sign-in")
        assert driver.find_element(By.ID, "page").text == "", "no data before sign-in"
        driver.find_element(By.ID, "token").send_keys("not-a-token-of-this-service")
        driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        wait.until(lambda d: "refused" in d.find_element(By.ID, "sign-in-error").text)
        driver.save_screenshot(str(shots / "sign-in.png"))
        errors()  # the refusals above are expected in the console; drained

        driver.find_element(By.ID, "token").send_keys(ADMIN)
        driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()

        # Funnel: every stage's entered and reached, as the API says.
        shown("[data-test=funnel-mqls]")
        funnel = api("Profiles/GetFunnel", {"from": midnight(29), "to": midnight(-1), "groupBy": "FUNNEL_GROUP_BY_SOURCE"})
        for s in funnel["total"]["stages"]:
            name = s["stage"].replace("STAGE_", "")
            row = driver.find_element(By.CSS_SELECTOR, f"tr[data-stage={name}]")
            assert number(row.find_element(By.CSS_SELECTOR, "[data-test=entered]").text) == float(s.get("entered", 0)), name
            assert number(row.find_element(By.CSS_SELECTOR, "[data-test=reached]").text) == float(s.get("reached", 0)), name
        mqls = next(s for s in funnel["total"]["stages"] if s["stage"] == "STAGE_MQL").get("reached", 0)
        assert number(text("[data-test=funnel-mqls]")) == float(mqls)
        assert len(driver.find_elements(By.CSS_SELECTOR, "[data-test=groups] tbody tr")) == len(funnel["groups"])
        driver.save_screenshot(str(shots / "funnel.png"))

        # Cohort of this month.
        driver.get(f"{base}/dashboard/#cohort")
        shown("[data-test=cohort-leads]")
        today = datetime.now(timezone.utc)
        first = datetime(today.year, today.month, 1, tzinfo=timezone.utc)
        following = datetime(today.year + (today.month == 12), today.month % 12 + 1, 1, tzinfo=timezone.utc)
        cohort = api("Profiles/GetCohortScoreProfile", {"createdFrom": first.isoformat(), "createdTo": following.isoformat()})
        assert number(text("[data-test=cohort-leads]")) == float(cohort.get("leadCount", 0))
        driver.save_screenshot(str(shots / "cohort.png"))

        # Cost and attribution: one row per campaign, and the total.
        driver.get(f"{base}/dashboard/#campaigns")
        shown("table tbody tr")
        report = api("Profiles/GetCampaignReport", {"from": midnight(29), "to": midnight(-1), "model": "ATTRIBUTION_MODEL_FIRST_TOUCH"})
        rows = driver.find_elements(By.CSS_SELECTOR, "table tbody tr")
        assert len(rows) == len(report.get("rows", [])) + 1, (len(rows), len(report.get("rows", [])))
        total = rows[-1].find_elements(By.TAG_NAME, "td")
        assert total[0].text == "total" and number(total[1].text) == round(report["total"].get("spend", 0), 2)
        driver.save_screenshot(str(shots / "campaigns.png"))

        # The SLA desk.
        driver.get(f"{base}/dashboard/#desk")
        desk = api("Profiles/ListHandovers", {"limit": 100})
        assert number(text("[data-test=desk-waiting]")) == float(desk.get("waiting", 0))
        driver.save_screenshot(str(shots / "desk.png"))

        # The lead just scored, found by its id.
        driver.get(f"{base}/dashboard/#lead")
        shown("#lead").send_keys("dash-1")
        driver.find_element(By.CSS_SELECTOR, "#page form button").click()
        score = api("LeadScoring/ScoreLead", {"leadId": "dash-1"})["score"]
        assert abs(number(text("[data-test=lead-total]")) - score["total"]) < 0.006, score
        assert text("[data-test=lead-stage]") == score.get("stage", "STAGE_LEAD").replace("STAGE_", "")
        wait.until(lambda d: "webinar_attended" in d.find_element(By.ID, "page").text)
        driver.save_screenshot(str(shots / "lead.png"))

        # The live feed shows a change made while it is open.
        driver.get(f"{base}/dashboard/#feed")
        shown("[data-test=feed]")
        time.sleep(0.5)
        api("LeadScoring/UpsertLead", {"lead": {"leadId": "dash-2", "attributes": {"seniority": "vp", "company_size": "1500"}}})
        burst = [{"eventId": f"d2-{i}", "leadId": "dash-2", "type": "content_download", "occurredAt": now} for i in range(4)]
        api("LeadScoring/RecordSignals", {"signals": burst})
        wait.until(lambda d: "dash-2" in d.find_element(By.CSS_SELECTOR, "[data-test=feed]").text)
        driver.save_screenshot(str(shots / "feed.png"))

        driver.get(f"{base}/dashboard/#delivery")
        wait.until(lambda d: "sales_alert_new_mql" in d.find_element(By.ID, "page").text)
        driver.save_screenshot(str(shots / "delivery.png"))
        severe = errors()
        assert not severe, severe

        # A token without the admin scope sees what it may, and says what it may not.
        driver.find_element(By.ID, "sign-out").click()
        shown("#sign-in")
        driver.find_element(By.ID, "token").send_keys(VIEWER)
        driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()
        page_shows("admin scope")  # the delivery page, where it signed in
        driver.get(f"{base}/dashboard/#lead/dash-1")
        page_shows("webinar_attended")
        # Looking at a lead is no export of its personal data.
        trail = api("Qualification/ListAuditEvents", {"limit": 1000})
        assert not [e for e in trail.get("events", []) if e["action"] == "lead.exported"], trail
        print(f"dashboard check passed: 7 pages, screenshots in {shots}")
    finally:
        if driver:
            driver.quit()
        service.terminate()
        service.wait(timeout=10)


if __name__ == "__main__":
    main()
