// Rollcall dashboard: calls the JSON API with the session's CSRF token (or, in kiosk mode, a
// recognize-scoped key) and shows every error the API returns in words. No dependencies.
"use strict";
(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const csrf = () => ($('meta[name="csrf-token"]') || {}).content || "";
  let kioskKey = null;

  const STATUS_WORDS = {
    401: "You are not signed in any more; sign in again.",
    403: "You are not allowed to do this.",
    404: "That no longer exists.",
    413: "The upload is too large.",
    503: "The server is busy; try again in a moment.",
  };

  function sentence(text) {
    const t = String(text).trim();
    if (!t) return t;
    const s = t[0].toUpperCase() + t.slice(1);
    return /[.!?]$/.test(s) ? s : s + ".";
  }

  function showError(err) {
    const box = $("#alert");
    const message = sentence(err && err.message ? err.message : String(err));
    if (box) {
      box.textContent = message;
      box.hidden = false;
      box.scrollIntoView({ block: "nearest" });
    }
    return message;
  }

  function clearError() {
    const box = $("#alert");
    if (box) {
      box.hidden = true;
      box.textContent = "";
    }
  }

  /** Calls the API; resolves with the JSON body, rejects with an Error in words. */
  async function api(method, url, body) {
    const headers = {};
    if (kioskKey) headers["Authorization"] = "Bearer " + kioskKey;
    else headers["X-CSRF-Token"] = csrf();
    let payload = body;
    if (body instanceof Blob) {
      headers["Content-Type"] = body.type || "application/octet-stream";
    } else if (body !== undefined && !(body instanceof FormData)) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(url, { method, headers, body: payload, credentials: "same-origin" });
    } catch (_) {
      throw new Error("The server could not be reached; check the connection and try again.");
    }
    if (res.status === 204) return null;
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!res.ok) {
      const fromServer = data && data.error && data.error.message;
      const err = new Error(fromServer || STATUS_WORDS[res.status] || `The server answered ${res.status}.`);
      err.status = res.status;
      err.code = data && data.error && data.error.code;
      throw err;
    }
    return data;
  }

  /** The JSON body of a form: empty fields left out (or null with data-nullable). */
  function formBody(form) {
    const body = {};
    for (const el of $$("input, select, textarea", form)) {
      if (!el.name || el.name === "csrf" || el.type === "file" || el.disabled) continue;
      if (el.type === "checkbox") {
        if (el.checked) (body[el.name] = body[el.name] || []).push(el.value);
        continue;
      }
      const value = el.value.trim();
      if (value === "") {
        if ("nullable" in el.dataset) body[el.name] = null;
        continue;
      }
      body[el.name] = el.dataset.type === "number" ? Number(value) : value;
    }
    return body;
  }

  function after(then, data) {
    if (!then) return;
    if (then === "reload") location.reload();
    else if (then === "person" && data && data.id) location.assign("/people/" + data.id);
    else if (then.startsWith("/")) location.assign(then);
  }

  // Forms and buttons that declare `data-api="METHOD /url"`.
  function wireDeclarative() {
    for (const form of $$("form[data-api]")) {
      form.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        clearError();
        const [method, url] = form.dataset.api.split(" ");
        const button = $("button[type=submit]", form);
        if (button) button.disabled = true;
        try {
          const data = await api(method, url, formBody(form));
          if (form.dataset.then === "saved") {
            const out = $("[role=status]", form);
            if (out) out.textContent = "Saved.";
          } else after(form.dataset.then, data);
        } catch (err) {
          showError(err);
        } finally {
          if (button) button.disabled = false;
        }
      });
    }
    for (const button of $$("button[data-api]")) {
      button.addEventListener("click", async () => {
        clearError();
        if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
        const [method, url] = button.dataset.api.split(" ");
        const body = "active" in button.dataset ? { active: button.dataset.active === "true" } : undefined;
        button.disabled = true;
        try {
          await api(method, url, body);
          after(button.dataset.then || "reload");
        } catch (err) {
          const dialog = button.closest("dialog");
          if (dialog) dialog.close();
          showError(err);
        } finally {
          button.disabled = false;
        }
      });
    }
    for (const opener of $$("button[data-dialog]")) {
      opener.addEventListener("click", () => document.getElementById(opener.dataset.dialog).showModal());
    }
  }

  // ---- drawing faces ----

  function faceLabel(face) {
    if (face.user) return face.user.name;
    if (face.quality && !face.quality.acceptable) return "Too small or blurry";
    return "Unknown";
  }

  function drawFaces(ctx, faces, scale) {
    const lw = Math.max(2, Math.round(3 * scale));
    ctx.lineWidth = lw;
    ctx.font = `${Math.max(14, Math.round(18 * scale))}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    for (const face of faces) {
      const b = face.box;
      const color = face.user ? "#1a7f37" : face.quality && !face.quality.acceptable ? "#6e7781" : "#cf6a00";
      ctx.strokeStyle = color;
      ctx.strokeRect(b.x, b.y, b.width, b.height);
      const label = faceLabel(face);
      const w = ctx.measureText(label).width + 8 * scale;
      const h = Math.max(18, 24 * scale);
      const top = b.y > h ? b.y - h : b.y + b.height + h;
      ctx.fillStyle = color;
      ctx.fillRect(b.x - lw / 2, top - h, w, h);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, b.x + 4 * scale, top - 3 * scale);
    }
  }

  function resultLine(face) {
    if (!face.user) return faceLabel(face) + " face";
    const sim = face.similarity != null ? ` (similarity ${face.similarity.toFixed(3)})` : "";
    const mark = face.attendance && face.attendance.recorded ? "marked present" : "already marked present in this dedupe window";
    return `${face.user.name}${sim}: ${mark}`;
  }

  // ---- enrol ----

  function wireEnrol() {
    const form = $("#enrol-form");
    if (!form) return;
    const input = $("#enrol-photos");
    const previews = $("#enrol-previews");
    const video = $("#enrol-video");
    const captured = [];
    let stream = null;

    function photos() {
      return Array.from(input.files).concat(captured);
    }

    function renderPreviews() {
      previews.replaceChildren();
      photos().forEach((file, i) => {
        const fig = document.createElement("figure");
        const img = document.createElement("img");
        img.src = URL.createObjectURL(file);
        img.alt = `Photo ${i + 1}`;
        const cap = document.createElement("figcaption");
        cap.textContent = `Photo ${i + 1}`;
        fig.append(img, cap);
        previews.append(fig);
      });
    }

    function showBoxes(faces) {
      $$("figure", previews).forEach((fig, i) => {
        const face = faces[i];
        const img = $("img", fig);
        if (!face || !img.naturalWidth) return;
        const box = document.createElement("div");
        box.className = "facebox";
        box.style.left = (100 * face.box.x) / img.naturalWidth + "%";
        box.style.top = (100 * face.box.y) / img.naturalHeight + "%";
        box.style.width = (100 * face.box.width) / img.naturalWidth + "%";
        box.style.height = (100 * face.box.height) / img.naturalHeight + "%";
        fig.append(box);
        $("figcaption", fig).textContent = `Photo ${i + 1}: face found, quality ${face.quality.toFixed(2)}`;
      });
    }

    input.addEventListener("change", renderPreviews);
    $("#camera-start").addEventListener("click", async () => {
      clearError();
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      } catch (err) {
        showError(new Error("The webcam could not be opened: " + err.message));
        return;
      }
      video.srcObject = stream;
      video.hidden = false;
      await video.play();
      $("#camera-snap").hidden = false;
    });
    $("#camera-snap").addEventListener("click", () => {
      const canvas = document.createElement("canvas");
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      canvas.getContext("2d").drawImage(video, 0, 0);
      canvas.toBlob((blob) => {
        if (!blob) return;
        captured.push(new File([blob], `webcam-${captured.length + 1}.jpg`, { type: "image/jpeg" }));
        renderPreviews();
      }, "image/jpeg", 0.92);
    });

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearError();
      const out = $("#enrol-result");
      out.textContent = "";
      const user = $("#enrol-user");
      const files = photos();
      if (!user.value) return showError(new Error("Choose the person to enrol."));
      if (!files.length) return showError(new Error("Choose or take at least one photo."));
      const body = new FormData();
      for (const f of files) body.append("photo", f, f.name || "photo.jpg");
      const button = $("#enrol-submit");
      button.disabled = true;
      out.textContent = "Checking the photos…";
      try {
        const data = await api("POST", `/api/v1/users/${user.value}/faces`, body);
        showBoxes(data.faces);
        const name = user.options[user.selectedIndex].textContent;
        out.textContent = `Enrolled ${data.faces.length} face${data.faces.length === 1 ? "" : "s"} for ${name}.`;
        input.value = "";
        captured.length = 0;
      } catch (err) {
        out.textContent = "Not enrolled: " + showError(err);
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---- live ----

  function wireLive() {
    const video = $("#live-video");
    if (!video) return;
    const overlay = $("#live-overlay");
    const status = $("#live-status");
    const marked = $("#marked");
    const seen = new Set();
    let stream = null;
    let timer = null;
    let inFlight = false;

    function note(face) {
      const recorded = face.attendance && face.attendance.recorded;
      if (!face.user || (!recorded && seen.has(face.user.id))) return;
      seen.add(face.user.id);
      const li = document.createElement("li");
      const when = new Date().toLocaleTimeString();
      li.textContent = recorded
        ? `${face.user.name}: marked present at ${when}`
        : `${face.user.name}: already marked present in this dedupe window`;
      marked.prepend(li);
    }

    async function tick() {
      if (inFlight || video.readyState < 2 || !video.videoWidth) return;
      inFlight = true;
      try {
        const frame = document.createElement("canvas");
        frame.width = video.videoWidth;
        frame.height = video.videoHeight;
        frame.getContext("2d").drawImage(video, 0, 0);
        const blob = await new Promise((ok) => frame.toBlob(ok, "image/jpeg", 0.85));
        if (!blob) return;
        const camera = encodeURIComponent($("#camera-id").value.trim() || "webcam");
        const data = await api("POST", `/api/v1/recognize?source=live&camera_id=${camera}`, blob);
        overlay.width = frame.width;
        overlay.height = frame.height;
        const ctx = overlay.getContext("2d");
        ctx.clearRect(0, 0, overlay.width, overlay.height);
        drawFaces(ctx, data.faces, frame.width / 640);
        data.faces.forEach(note);
        status.textContent = data.faces.length
          ? `${data.faces.length} face${data.faces.length === 1 ? "" : "s"} in view: ${data.faces.map(faceLabel).join(", ")}.`
          : "No face in view.";
        clearError();
      } catch (err) {
        showError(err);
        if (err.status === 401 || err.status === 403) stop();
      } finally {
        inFlight = false;
      }
    }

    async function start() {
      clearError();
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
      } catch (err) {
        showError(new Error("The webcam could not be opened: " + err.message));
        return;
      }
      video.srcObject = stream;
      await video.play();
      status.textContent = "Camera on; looking for faces…";
      $("#live-start").disabled = true;
      $("#live-stop").disabled = false;
      timer = setInterval(tick, 500);
    }

    function stop() {
      clearInterval(timer);
      timer = null;
      if (stream) stream.getTracks().forEach((t) => t.stop());
      stream = null;
      status.textContent = "Camera off.";
      $("#live-start").disabled = false;
      $("#live-stop").disabled = true;
    }

    $("#live-start").addEventListener("click", start);
    $("#live-stop").addEventListener("click", stop);
    return start;
  }

  function wireRecognize() {
    const form = $("#recognize-form");
    if (!form) return;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearError();
      const file = $("#recognize-photo").files[0];
      const list = $("#recognize-result");
      list.replaceChildren();
      if (!file) return showError(new Error("Choose a photo to recognise."));
      try {
        const data = await api("POST", "/api/v1/recognize?source=upload", file);
        const img = new Image();
        img.src = URL.createObjectURL(file);
        await img.decode();
        const canvas = $("#recognize-canvas");
        canvas.width = img.naturalWidth;
        canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        drawFaces(ctx, data.faces, img.naturalWidth / 640);
        if (!data.faces.length) data.faces = [];
        for (const face of data.faces) {
          const li = document.createElement("li");
          li.textContent = resultLine(face);
          list.append(li);
        }
        if (!data.faces.length) {
          const li = document.createElement("li");
          li.textContent = "No face was found in this photo.";
          list.append(li);
        }
      } catch (err) {
        showError(err);
      }
    });
  }

  function wireKeys() {
    const form = $("#create-key-form");
    if (!form) return;
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearError();
      const body = formBody(form);
      body.scopes = body.scopes || [];
      try {
        const data = await api("POST", "/api/v1/api-keys", body);
        $("#new-key-secret").textContent = data.key;
        $("#new-key").hidden = false;
        const row = document.createElement("tr");
        for (const text of [data.api_key.name, data.api_key.prefix + "…", data.api_key.scopes.join(", "), "just now", "never", "active"]) {
          const td = document.createElement("td");
          td.textContent = text;
          row.append(td);
        }
        $("#keys tbody").prepend(row);
        form.reset();
      } catch (err) {
        showError(err);
      }
    });
  }

  function wireKiosk(startLive) {
    if (document.body.dataset.page !== "kiosk") return;
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
    if (fromHash) {
      sessionStorage.setItem("rollcall-kiosk-key", fromHash);
      history.replaceState(null, "", location.pathname);
    }
    const begin = (key) => {
      kioskKey = key;
      $("#kiosk-key-form").hidden = true;
      $("#kiosk-live").hidden = false;
      if (startLive) startLive();
    };
    const stored = sessionStorage.getItem("rollcall-kiosk-key");
    if (stored) return begin(stored);
    const form = $("#kiosk-key-form");
    form.hidden = false;
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const key = $("#kiosk-key").value.trim();
      sessionStorage.setItem("rollcall-kiosk-key", key);
      begin(key);
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    wireDeclarative();
    wireEnrol();
    const startLive = wireLive();
    wireRecognize();
    wireKeys();
    wireKiosk(startLive);
  });
})();
