// Keyboard shortcuts of the annotation page. Each key submits one of the page's forms, so the
// keyboard path and the mouse path are the same server requests (and the same CSRF checks).
(function () {
  "use strict";
  let submitting = false;  // a held-down key must not send the same vote twice

  function submit(formId, buttonId) {
    const form = document.getElementById(formId);
    if (!form || submitting) return;
    submitting = true;
    const button = buttonId ? document.getElementById(buttonId) : null;
    form.requestSubmit(button || undefined);
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.matches("textarea, input, select");
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;  // letters typed into the comment box are text, not shortcuts
    }
    switch (event.key) {
      case "j": case "1": submit("vote-form", "vote-up"); break;
      case "k": case "2": submit("vote-form", "vote-down"); break;
      case "s": submit("skip-form"); break;
      case "u": submit("undo-form"); break;
      case "c": {
        const comment = document.getElementById("comment");
        if (comment) { event.preventDefault(); comment.focus(); }
        return;
      }
      default: return;
    }
    event.preventDefault();
  });
  // The live character counter of the comment box, so the limit is visible before it is reached.
  const comment = document.getElementById("comment");
  const count = document.getElementById("comment-count");
  if (comment && count) {
    const max = Number(count.dataset.max);
    const update = function () {
      const n = comment.value.length;
      count.textContent = n + " / " + max + (n >= max ? " (limit reached)" : "");
      count.classList.toggle("over", n >= max * 0.9);
    };
    comment.addEventListener("input", update);
    update();
  }

  // Lets a person (and the browser tests) tell that the shortcuts are live.
  document.body.dataset.shortcuts = "ready";
})();
