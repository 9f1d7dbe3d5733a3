import pytest
from inference.phantoms import generate_phantom

@pytest.mark.browser
def test_preview(live_server, transactional_db, make_study, add_reader, page, artifacts_dir):
    from annotation import services
    study = make_study("pref", task_kinds=["preference", "realism"], display_size=512, readers_per_image=1)
    rnd = services.round_create(study=study)
    for i in range(4):
        services.image_store(study=study, round=rnd, source="synthetic", prompt="p", pixels=generate_phantom(seed=20 + i, size=512).image)
    services.round_open_labeling(round=rnd)
    r = add_reader(study, "dr-pair")
    page.goto(live_server.url + "/accounts/login/")
    page.fill("input[name=username]", "dr-pair"); page.fill("input[name=password]", "pw-dr-pair"); page.keyboard.press("Enter")
    page.wait_for_url("**/portal/")
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/c/*/")
    page.wait_for_function("() => [...document.querySelectorAll('.viewer img')].every(i => i.complete && i.naturalWidth > 0)")
    page.keyboard.press("ArrowRight")
    for k in ["+", "+", "]", "i"]:
        page.keyboard.press(k)
    page.screenshot(path=artifacts_dir / "pair.png")
    page.keyboard.press("0")
    page.set_viewport_size({"width": 1024, "height": 700})
    page.screenshot(path=artifacts_dir / "pair-small.png")
    page.keyboard.press("x")
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    page.goto(live_server.url + "/accounts/login/")
    page.context.clear_cookies()
    page.goto(live_server.url + "/accounts/login/")
    page.fill("input[name=username]", "dr-pair"); page.fill("input[name=password]", "wrong"); page.keyboard.press("Enter")
    page.wait_for_load_state()
    page.screenshot(path=artifacts_dir / "login-error.png")
    print(page.problems.items)
