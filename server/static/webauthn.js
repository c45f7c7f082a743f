// Portcullis WebAuthn page script (served as /static/webauthn.js; the CSP
// allows only same-origin scripts, so nothing here is inline).
//
// Sections marked data-webauthn="second-factor" | "passkey-login" |
// "register" carry data-csrf-token; their button with
// data-webauthn-action="start" runs the ceremony against the JSON
// endpoints, and the element with data-webauthn-status shows errors.
(function () {
  "use strict";

  function decode(text) {
    var s = String(text).replace(/-/g, "+").replace(/_/g, "/");
    while (s.length % 4) s += "=";
    var bin = atob(s);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function encode(buffer) {
    if (!buffer) return null;
    var bytes = new Uint8Array(buffer);
    var bin = "";
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function descriptors(list) {
    return (list || []).map(function (c) {
      return Object.assign({}, c, { id: decode(c.id) });
    });
  }

  function creationOptions(pk) {
    var o = Object.assign({}, pk);
    o.challenge = decode(pk.challenge);
    o.user = Object.assign({}, pk.user, { id: decode(pk.user.id) });
    o.excludeCredentials = descriptors(pk.excludeCredentials);
    return o;
  }

  function requestOptions(pk) {
    var o = Object.assign({}, pk);
    o.challenge = decode(pk.challenge);
    o.allowCredentials = descriptors(pk.allowCredentials);
    return o;
  }

  function extensions(cred) {
    try {
      return cred.getClientExtensionResults ? cred.getClientExtensionResults() : {};
    } catch (e) {
      return {};
    }
  }

  function registrationJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: encode(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: encode(r.attestationObject),
        clientDataJSON: encode(r.clientDataJSON),
        transports: r.getTransports ? r.getTransports() : undefined
      },
      extensions: extensions(cred)
    };
  }

  function assertionJSON(cred) {
    var r = cred.response;
    return {
      id: cred.id,
      rawId: encode(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: encode(r.authenticatorData),
        clientDataJSON: encode(r.clientDataJSON),
        signature: encode(r.signature),
        userHandle: encode(r.userHandle)
      },
      extensions: extensions(cred)
    };
  }

  function post(url, csrf, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-CSRF-Token": csrf
      },
      body: JSON.stringify(body || {})
    }).then(function (resp) {
      return resp.json().catch(function () { return {}; }).then(function (data) {
        if (!resp.ok) {
          var err = new Error(data.message || "the request failed (" + resp.status + ")");
          err.code = data.error;
          throw err;
        }
        return data;
      });
    });
  }

  function explain(err) {
    if (err && err.name === "NotAllowedError") {
      return "The security key request was cancelled or timed out. Try again.";
    }
    if (err && err.name === "InvalidStateError") {
      return "This security key is already registered to your account.";
    }
    return (err && err.message) || "Something went wrong. Try again.";
  }

  var flows = {
    "second-factor": function (section, csrf) {
      return post("/login/webauthn/start", csrf).then(function (start) {
        return navigator.credentials.get({ publicKey: requestOptions(start.publicKey) })
          .then(function (cred) {
            return post("/login/webauthn/finish", csrf, {
              challenge_id: start.challenge_id,
              credential: assertionJSON(cred)
            });
          });
      }).then(function (done) {
        window.location.assign(done.redirect);
      });
    },

    "passkey-login": function (section, csrf) {
      var request = section.getAttribute("data-request") || null;
      return post("/login/passkey/start", csrf, { request: request }).then(function (start) {
        return navigator.credentials.get({ publicKey: requestOptions(start.publicKey) })
          .then(function (cred) {
            return post("/login/passkey/finish", csrf, {
              challenge_id: start.challenge_id,
              credential: assertionJSON(cred)
            });
          });
      }).then(function (done) {
        window.location.assign(done.redirect);
      });
    },

    "register": function (section, csrf) {
      var input = section.querySelector("input[type=text]");
      var name = input ? input.value.trim() : "";
      if (!name) {
        return Promise.reject(new Error("Give the key a name first."));
      }
      return post("/account/mfa/webauthn/register/start", csrf).then(function (start) {
        return navigator.credentials.create({ publicKey: creationOptions(start.publicKey) })
          .then(function (cred) {
            return post("/account/mfa/webauthn/register/finish", csrf, {
              challenge_id: start.challenge_id,
              name: name,
              credential: registrationJSON(cred)
            });
          });
      }).then(function (done) {
        if (done.recovery_codes && done.recovery_codes.length) {
          var list = section.ownerDocument.createElement("ul");
          done.recovery_codes.forEach(function (code) {
            var li = section.ownerDocument.createElement("li");
            var c = section.ownerDocument.createElement("code");
            c.textContent = code;
            li.appendChild(c);
            list.appendChild(li);
          });
          var note = section.ownerDocument.createElement("p");
          note.textContent = "Keep these recovery codes somewhere safe. Each works once, and they are shown only now.";
          section.replaceChildren(note, list);
          return;
        }
        window.location.reload();
      });
    }
  };

  function wire(section) {
    var flow = flows[section.getAttribute("data-webauthn")];
    var button = section.querySelector("[data-webauthn-action=start]");
    var status = section.querySelector("[data-webauthn-status]");
    if (!flow || !button) return;
    if (!window.PublicKeyCredential || !navigator.credentials) {
      button.disabled = true;
      if (status) {
        status.textContent = "This browser does not support security keys or passkeys.";
        status.hidden = false;
      }
      return;
    }
    button.addEventListener("click", function () {
      var csrf = section.getAttribute("data-csrf-token") || "";
      button.disabled = true;
      if (status) status.hidden = true;
      flow(section, csrf).catch(function (err) {
        if (err && err.code === "login_expired") {
          window.location.assign("/login");
          return;
        }
        if (status) {
          status.textContent = explain(err);
          status.hidden = false;
        }
      }).then(function () {
        button.disabled = false;
      });
    });
  }

  Array.prototype.forEach.call(document.querySelectorAll("[data-webauthn]"), wire);
})();
