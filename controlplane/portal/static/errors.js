// Errors: each API's own envelope (desktop-api.md, projects-api.md) read into one ApiError.
// ---- errors: each API's own envelope ------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

export function parseError(status, body) {
  if (body && typeof body === "object") {
    if (body.success === false && body.error) {  // the Desktop API (desktop-api.md)
      return new ApiError(status, body.error, body.message || body.error, body.details);
    }
    if (body.error && typeof body.error === "object") {  // the projects API (projects-api.md)
      return new ApiError(status, body.error.code, body.error.message || body.error.code, body.error.details);
    }
  }
  return new ApiError(status, "HTTP_" + status, `The server answered ${status}`);
}

// fetch() rejects with a TypeError when the server cannot be reached; anything else is the page's own bug.
export function asApiError(err) {
  if (err instanceof ApiError) return err;
  if (err instanceof TypeError && /fetch|network/i.test(err.message)) {
    return new ApiError(0, "NETWORK", "The control plane cannot be reached: check your connection and try again");
  }
  console.error(err);
  return new ApiError(0, "PAGE_ERROR", `Unexpected error in the page: ${err.message || err}`);
}
